package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

const testNode = "node-a"

// testPort returns a TCP ClusterIP service port "ns/name:p80" on ip:80, changed by mutate.
func testPort(name, ip string, mutate func(*proxier.ServicePort)) *proxier.ServicePort {
	ns, svc, _ := strings.Cut(name, "/")
	p := &proxier.ServicePort{
		Name:      endpoints.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: svc}, Port: "p80", Protocol: v1.ProtocolTCP},
		ClusterIP: netip.MustParseAddr(ip),
		Port:      80,
		Protocol:  v1.ProtocolTCP,
	}
	if mutate != nil {
		mutate(p)
	}
	return p
}

// ep returns a ready endpoint at "ip:port"; local says whether it runs on testNode.
func ep(addr string, local bool) endpoints.Endpoint {
	ap := netip.MustParseAddrPort(addr)
	node := "node-b"
	if local {
		node = testNode
	}
	return endpoints.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), NodeName: node, Local: local, Ready: true, Serving: true}
}

// placeholder matches {SVC}, {SVL}, {EXT}, {FW} and {SEP ip:port} (upstream's KUBE-SEP chain
// name of the endpoint: the name of its session-affinity list) in expected rules.
var placeholder = regexp.MustCompile(`\{(SVC|SVL|EXT|FW|SEP [^}]+)\}`)

// expand replaces placeholders with the chain names of port p.
func expand(p *proxier.ServicePort, lines []string) []string {
	name, proto := p.Name.String(), strings.ToLower(string(p.Protocol))
	c := chainsFor(name, proto)
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = placeholder.ReplaceAllStringFunc(l, func(m string) string {
			key := m[1 : len(m)-1]
			switch key {
			case "SVC":
				return c.cluster
			case "SVL":
				return c.local
			case "EXT":
				return c.external
			case "FW":
				return c.firewall
			}
			return endpointChain(name, proto, strings.TrimPrefix(key, "SEP "))
		})
	}
	return out
}

// renderRules renders portRules as "TABLE CHAIN SPEC" lines (a rule-less chain as "nat CHAIN").
func renderRules(r *portRules) []string {
	var out []string
	for _, t := range r.top {
		out = append(out, t.table+" "+t.chain+" "+t.spec)
	}
	for _, c := range r.chains {
		if len(c.rules) == 0 {
			out = append(out, "nat "+c.name)
		}
		for _, rule := range c.rules {
			out = append(out, "nat "+c.name+" "+rule)
		}
	}
	return out
}

// world is a small API state fed to trackers, for Proxier tests over Fakes.
type world struct {
	t        testing.TB
	p        *Proxier
	fakes    map[v1.IPFamily]*Fake
	trackers []*proxier.Tracker
	node     endpoints.Node
}

// newWorld returns a Proxier over Fakes for the families in cfg (IPv4 when none).
func newWorld(t *testing.T, cfg Config) *world {
	t.Helper()
	if len(cfg.Families) == 0 {
		cfg.Families = []v1.IPFamily{v1.IPv4Protocol}
	}
	if cfg.MasqueradeBit == 0 {
		cfg.MasqueradeBit = 14
	}
	w := &world{t: t, fakes: map[v1.IPFamily]*Fake{}, node: endpoints.Node{Name: testNode}}
	cfg.Executors = map[v1.IPFamily]Executor{}
	for _, f := range cfg.Families {
		w.fakes[f] = NewFake(f)
		cfg.Executors[f] = w.fakes[f]
		w.trackers = append(w.trackers, proxier.NewTracker(f, testNode))
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	w.p = p
	return w
}

// addService adds or replaces a Service in every tracker.
func (w *world) addService(svc *v1.Service) {
	for _, tr := range w.trackers {
		tr.UpdateService(nil, svc)
	}
}

// deleteService deletes a Service from every tracker.
func (w *world) deleteService(svc *v1.Service) {
	for _, tr := range w.trackers {
		tr.UpdateService(svc, nil)
	}
}

// addSlice adds or replaces an EndpointSlice in every tracker.
func (w *world) addSlice(s *discovery.EndpointSlice) {
	for _, tr := range w.trackers {
		tr.UpdateEndpointSlice(s, false)
	}
}

// sync checks out every tracker and runs one Sync.
func (w *world) sync(full bool) error {
	req := &proxier.SyncRequest{Full: full, Node: w.node, Trackers: w.trackers}
	for _, tr := range w.trackers {
		req.Checkouts = append(req.Checkouts, tr.Checkout())
	}
	return w.p.Sync(context.Background(), req)
}

// mustSync syncs and fails the test on error.
func (w *world) mustSync(full bool) {
	w.t.Helper()
	if err := w.sync(full); err != nil {
		w.t.Fatalf("Sync(full=%t): %v", full, err)
	}
}

// svc returns a ClusterIP Service ns/name with port p80 (80 → 8080/TCP) on clusterIP.
func svc(ns, name, clusterIP string, mutate func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:      v1.ServiceTypeClusterIP,
			ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{Name: "p80", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if mutate != nil {
		mutate(s)
	}
	return s
}

// slice returns the EndpointSlice of ns/name with ready endpoints at ips (port 8080, p80);
// an ip prefixed with "local:" runs on testNode.
func slice(ns, name string, ips ...string) *discovery.EndpointSlice {
	addrType := discovery.AddressTypeIPv4
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-1", Labels: map[string]string{discovery.LabelServiceName: name}},
		Ports:      []discovery.EndpointPort{{Name: ptr.To("p80"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints:  []discovery.Endpoint{},
	}
	for _, ip := range ips {
		node := "node-b"
		if rest, ok := strings.CutPrefix(ip, "local:"); ok {
			ip, node = rest, testNode
		}
		if netip.MustParseAddr(ip).Is6() {
			addrType = discovery.AddressTypeIPv6
		}
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses: []string{ip}, NodeName: ptr.To(node),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		})
	}
	s.AddressType = addrType
	return s
}

// lines returns the non-empty lines of s.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// diffLines describes the difference between want and got line lists ("" when equal).
func diffLines(want, got []string) string {
	if strings.Join(want, "\n") == strings.Join(got, "\n") {
		return ""
	}
	return fmt.Sprintf("got:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
}
