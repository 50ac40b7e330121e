package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// Test address plan (IPv4; IPv6 tests use the proxiertest World): node 192.168.0.2, pods
// 10.0.0.0/8 (this node's 10.0.1.0/24), ClusterIPs 172.30.0.0/16, LoadBalancer and external
// IPs 1.2.3.0/24 and 5.6.7.0/24, outside clients 203.0.113.0/24.
const testNode = "node-a"

var (
	testNodeIP    = netip.MustParseAddr("192.168.0.2")
	testPodCIDR   = netip.MustParsePrefix("10.0.0.0/8")
	testSvcCIDR   = netip.MustParsePrefix("172.30.0.0/16")
	testLocalPod  = netip.MustParseAddr("10.0.1.99")
	testOutside   = netip.MustParseAddr("203.0.113.7")
	testNodeTrace = TraceNode{LocalAddrs: []netip.Addr{testNodeIP}}
)

// testConfig is the IPv4 configuration most tests use.
func testConfig() Config {
	return Config{
		Families:     []v1.IPFamily{v1.IPv4Protocol},
		NodeIPs:      []netip.Addr{testNodeIP},
		Detectors:    map[v1.IPFamily]proxier.LocalDetector{v1.IPv4Protocol: {Mode: proxier.LocalModeClusterCIDR, CIDR: testPodCIDR}},
		ServiceCIDRs: []netip.Prefix{testSvcCIDR},
	}
}

// testFamilyConfig returns the familyConfig of cfg's first family.
func testFamilyConfig(t *testing.T, cfg Config) *familyConfig {
	t.Helper()
	fc, err := newFamilyConfig(cfg, cfg.Families[0], 1<<DefaultMasqueradeBit)
	if err != nil {
		t.Fatalf("newFamilyConfig: %v", err)
	}
	return fc
}

// svcOpt changes a test Service.
type svcOpt func(*v1.Service)

// makeService returns a ClusterIP Service ns/name with one TCP port 80 (named "p80").
func makeService(name, clusterIP string, opts ...svcOpt) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{
			Type:      v1.ServiceTypeClusterIP,
			ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{Name: "p80", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(80)}},
		},
	}
	for _, o := range opts {
		o(svc)
	}
	return svc
}

func withNodePort(np int32) svcOpt {
	return func(s *v1.Service) {
		if s.Spec.Type == v1.ServiceTypeClusterIP {
			s.Spec.Type = v1.ServiceTypeNodePort
		}
		s.Spec.Ports[0].NodePort = np
	}
}

func withLB(ips ...string) svcOpt {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		for _, ip := range ips {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	}
}

func withSourceRanges(r ...string) svcOpt {
	return func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = r }
}

func withExternalIPs(ips ...string) svcOpt {
	return func(s *v1.Service) { s.Spec.ExternalIPs = ips }
}

func withETPLocal(s *v1.Service) {
	s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	s.Spec.HealthCheckNodePort = 30000
}

func withITPLocal(s *v1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
}

func withAffinity(seconds int32) svcOpt {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(seconds)}}
	}
}

func withProtocol(p v1.Protocol) svcOpt {
	return func(s *v1.Service) { s.Spec.Ports[0].Protocol = p }
}

// ep describes a test endpoint: "10.0.1.1" (local to testNode) or "10.0.2.1" (remote); flags
// "terminating" (serving, not ready) and "notready".
type ep struct {
	ip    string
	flags string
}

// makeSlice returns the EndpointSlice of ns/svcName with eps at port 8080 (port name "p80").
func makeSlice(svcName string, eps ...ep) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svcName + "-1", Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p80"), Port: ptr.To(int32(8080)), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, e := range eps {
		node := "node-b"
		if strings.HasPrefix(e.ip, "10.0.1.") {
			node = testNode
		}
		d := discovery.Endpoint{Addresses: []string{e.ip}, NodeName: ptr.To(node)}
		switch e.flags {
		case "terminating":
			d.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
		case "notready":
			d.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false)}
		}
		s.Endpoints = append(s.Endpoints, d)
	}
	return s
}

// testEnv drives a Proxier over a Fake through a real change tracker.
type testEnv struct {
	t       *testing.T
	fake    *Fake
	p       *Proxier
	tracker *proxier.Tracker
	node    endpoints.Node
	// rec records the transactions of kernel environments (nil otherwise).
	rec *recordingConn
}

func newTestEnv(t *testing.T, cfg Config) *testEnv {
	t.Helper()
	fake := NewFake()
	p, err := NewWithConn(cfg, fake)
	if err != nil {
		t.Fatalf("NewWithConn: %v", err)
	}
	return &testEnv{t: t, fake: fake, p: p, tracker: proxier.NewTracker(cfg.Families[0], testNode),
		node: endpoints.Node{Name: testNode}}
}

// add adds or replaces a Service and its endpoints (nil slice: none).
func (e *testEnv) add(svc *v1.Service, slice *discovery.EndpointSlice) {
	e.tracker.UpdateService(nil, svc)
	if slice != nil {
		e.tracker.UpdateEndpointSlice(slice, false)
	}
}

// sync checks out the tracker and syncs; it fails the test on error.
func (e *testEnv) sync(full bool) {
	e.t.Helper()
	if err := e.trySync(full); err != nil {
		e.t.Fatalf("Sync(full=%t): %v", full, err)
	}
}

func (e *testEnv) trySync(full bool) error {
	req := &proxier.SyncRequest{Full: full, Node: e.node, Checkouts: []*proxier.Checkout{e.tracker.Checkout()}, Trackers: []*proxier.Tracker{e.tracker}}
	return e.p.Sync(context.Background(), req)
}

// trace traces a TCP (unless proto is set) packet and returns a one-line summary:
// "accept 10.0.1.1:8080 10.0.2.1:8080 masq sticky", "drop", "reject", "accept".
func (e *testEnv) trace(src netip.Addr, dst string, port int32, fromHost bool, proto ...v1.Protocol) string {
	e.t.Helper()
	p := Packet{Src: src, Dst: netip.MustParseAddr(dst), Protocol: v1.ProtocolTCP, Port: port, FromHost: fromHost}
	if len(proto) > 0 {
		p.Protocol = proto[0]
	}
	res, err := e.fake.Trace(p, testNodeTrace)
	if err != nil {
		e.t.Fatalf("Trace: %v", err)
	}
	return summary(res)
}

// summary renders a TraceResult on one line.
func summary(res TraceResult) string {
	parts := []string{res.Verdict}
	for _, ep := range res.Endpoints {
		parts = append(parts, ep.String())
	}
	if res.Masquerade {
		parts = append(parts, "masq")
	}
	if len(res.Hairpin) > 0 {
		parts = append(parts, "hairpin")
	}
	if res.Sticky {
		parts = append(parts, "sticky")
	}
	return strings.Join(parts, " ")
}

// renderPort renders a port's desired elements ("set element") and chains, sorted.
func renderPort(fc *familyConfig, st *portState) (elems, chains []string) {
	fam := fc.fam
	for _, u := range st.elements(fc) {
		for _, e := range u.elems {
			elems = append(elems, e.set+" "+renderElement(fam.setIndex[e.set], e.el))
		}
	}
	for _, c := range st.chains {
		chains = append(chains, c.name())
	}
	sort.Strings(elems)
	sort.Strings(chains)
	return elems, chains
}

// diffLines reports lines missing from got and unexpected in got.
func diffLines(got, want []string) string {
	var b strings.Builder
	for _, w := range want {
		if !slices.Contains(got, w) {
			fmt.Fprintf(&b, "\n  missing:    %s", w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			fmt.Fprintf(&b, "\n  unexpected: %s", g)
		}
	}
	return b.String()
}

// portOf returns the only port of svc in the IPv4 family.
func portOf(t *testing.T, svc *v1.Service) *proxier.ServicePort {
	t.Helper()
	for _, p := range proxier.ServicePortsOf(svc, v1.IPv4Protocol) {
		return p
	}
	t.Fatalf("service %s has no IPv4 port", svc.Name)
	return nil
}

// endpointsOf returns the endpoints of the only port of a slice, as the tracker would.
func endpointsOf(t *testing.T, slice *discovery.EndpointSlice) []endpoints.Endpoint {
	t.Helper()
	cache := endpoints.NewSliceCache(v1.IPv4Protocol, testNode)
	nn, _ := cache.Update(slice, false)
	for _, eps := range cache.EndpointsFor(nn) {
		return eps
	}
	return nil
}

// testEnvNode is the node endpoint choice sees in tests.
func testEnvNode() endpoints.Node { return endpoints.Node{Name: testNode} }

// mustAddr parses an address.
func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
