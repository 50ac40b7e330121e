package userspace

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// Test address plan (loopback tests): Services are never reached through their ClusterIP; the
// fake capture says which listener port a ClusterIP:port maps to, and clients connect to
// 127.0.0.1:<that port>. Backends listen on 127.0.0.1:<random>.
const (
	testNamespace = "ns"
	testNode      = "node-a"
)

// testWorld feeds a real proxier.Tracker for one family, so every request looks like Core's.
type testWorld struct {
	t        *testing.T
	tracker  *proxier.Tracker
	node     endpoints.Node
	services map[string]*v1.Service
	slices   map[string]*discovery.EndpointSlice
}

// newTestWorld returns an empty world for family.
func newTestWorld(t *testing.T, family v1.IPFamily) *testWorld {
	return &testWorld{t: t, tracker: proxier.NewTracker(family, testNode), node: endpoints.Node{Name: testNode},
		services: map[string]*v1.Service{}, slices: map[string]*discovery.EndpointSlice{}}
}

// setService adds or updates a Service.
func (w *testWorld) setService(svc *v1.Service) {
	w.tracker.UpdateService(w.services[svc.Name], svc)
	w.services[svc.Name] = svc
}

// deleteService deletes a Service.
func (w *testWorld) deleteService(name string) {
	w.tracker.UpdateService(w.services[name], nil)
	delete(w.services, name)
}

// setSlice adds or updates an EndpointSlice.
func (w *testWorld) setSlice(slice *discovery.EndpointSlice) {
	w.tracker.UpdateEndpointSlice(slice, false)
	w.slices[slice.Name] = slice
}

// deleteSlice deletes an EndpointSlice.
func (w *testWorld) deleteSlice(name string) {
	w.tracker.UpdateEndpointSlice(w.slices[name], true)
	delete(w.slices, name)
}

// request checks out the pending changes.
func (w *testWorld) request(full bool) *proxier.SyncRequest {
	return &proxier.SyncRequest{Full: full, Node: w.node,
		Checkouts: []*proxier.Checkout{w.tracker.Checkout()}, Trackers: []*proxier.Tracker{w.tracker}}
}

// sync runs one sync and fails the test on error.
func (w *testWorld) sync(p *Proxier, full bool) {
	w.t.Helper()
	if err := p.Sync(w.t.Context(), w.request(full)); err != nil {
		w.t.Fatalf("Sync(full=%t): %v", full, err)
	}
}

// serviceOption changes a test Service.
type serviceOption func(*v1.Service)

// testService returns a ClusterIP Service.
func testService(name, clusterIP string, opts ...serviceOption) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace, Name: name},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}},
	}
	for _, o := range opts {
		o(svc)
	}
	return svc
}

// withPort adds a port (nodePort > 0 makes the Service a NodePort Service).
func withPort(name string, proto v1.Protocol, port, nodePort int32) serviceOption {
	return func(svc *v1.Service) {
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: name, Protocol: proto, Port: port, NodePort: nodePort})
		if nodePort > 0 && svc.Spec.Type == v1.ServiceTypeClusterIP {
			svc.Spec.Type = v1.ServiceTypeNodePort
		}
	}
}

// withExternalIPs sets spec.externalIPs.
func withExternalIPs(ips ...string) serviceOption {
	return func(svc *v1.Service) { svc.Spec.ExternalIPs = ips }
}

// withLoadBalancer makes the Service a LoadBalancer with these ingress IPs.
func withLoadBalancer(ips ...string) serviceOption {
	return func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeLoadBalancer
		for _, ip := range ips {
			svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	}
}

// withExternalLocal sets externalTrafficPolicy: Local.
func withExternalLocal() serviceOption {
	return func(svc *v1.Service) { svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }
}

// withAffinity sets sessionAffinity ClientIP with a timeout.
func withAffinity(seconds int32) serviceOption {
	return func(svc *v1.Service) {
		svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(seconds)}}
	}
}

// testEndpoint is one endpoint of a test slice.
type testEndpoint struct {
	addr        netip.AddrPort
	node        string
	terminating bool
}

// endpointSlice returns a slice of service with one port (named portName) and one endpoint,
// named after the endpoint so every endpoint may have a port of its own.
func endpointSlice(service, portName string, proto v1.Protocol, ep testEndpoint) *discovery.EndpointSlice {
	addrType := discovery.AddressTypeIPv4
	if ep.addr.Addr().Is6() {
		addrType = discovery.AddressTypeIPv6
	}
	node := ep.node
	if node == "" {
		node = testNode
	}
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace,
			Name:   fmt.Sprintf("%s-%s-%s", service, strings.ToLower(string(proto)), strings.NewReplacer(".", "-", ":", "-", "[", "", "]", "").Replace(ep.addr.String())),
			Labels: map[string]string{discovery.LabelServiceName: service}},
		AddressType: addrType,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(proto), Port: ptr.To(int32(ep.addr.Port()))}},
		Endpoints: []discovery.Endpoint{{
			Addresses:  []string{ep.addr.Addr().String()},
			NodeName:   ptr.To(node),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(!ep.terminating), Serving: ptr.To(true), Terminating: ptr.To(ep.terminating)},
		}},
	}
}

// portName returns the ServicePortName of a test Service's port.
func portName(service, port string, proto v1.Protocol) endpoints.ServicePortName {
	return endpoints.ServicePortName{NamespacedName: types.NamespacedName{Namespace: testNamespace, Name: service}, Port: port, Protocol: proto}
}

// fakeCapture is a capturer that keeps the tables in memory and checks every change the way
// the kernel would: deleting a missing element or re-adding a key with another value fails.
type fakeCapture struct {
	mu       sync.Mutex
	tables   map[v1.IPFamily]map[captureKey]uint16
	applies  int
	fulls    int
	failNext error
	removed  bool
}

// newFakeCapture returns an empty fake.
func newFakeCapture() *fakeCapture {
	return &fakeCapture{tables: map[v1.IPFamily]map[captureKey]uint16{}}
}

// Apply implements capturer.
func (f *fakeCapture) Apply(changes []familyChange) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failNext; err != nil {
		f.failNext = nil
		return err
	}
	f.applies++
	for _, ch := range changes {
		table := f.tables[ch.family]
		switch {
		case ch.full:
			f.fulls++
			table = map[captureKey]uint16{}
			f.tables[ch.family] = table
		case table == nil:
			return fmt.Errorf("updating elements of the missing %s table", ch.family)
		}
		for _, e := range ch.del {
			if have, ok := table[e.captureKey]; !ok || have != e.target {
				return fmt.Errorf("deleting element %+v: not in the table", e)
			}
			delete(table, e.captureKey)
		}
		for _, e := range ch.add {
			if have, ok := table[e.captureKey]; ok && have != e.target {
				return fmt.Errorf("adding element %+v: key holds %d", e, have)
			}
			table[e.captureKey] = e.target
		}
	}
	return nil
}

// Remove implements capturer.
func (f *fakeCapture) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = true
	clear(f.tables)
	return nil
}

// target returns where the table redirects a key.
func (f *fakeCapture) target(family v1.IPFamily, key captureKey) (uint16, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	port, ok := f.tables[family][key]
	return port, ok
}

// serviceKey is the capture key of addr:port.
func serviceKey(addr string, proto v1.Protocol, port uint16) captureKey {
	return captureKey{kind: elemService, addr: netip.MustParseAddr(addr), proto: proto, port: port}
}

// listenerPortOf returns the listener port a service address is redirected to, or fails.
func (f *fakeCapture) listenerPortOf(t *testing.T, family v1.IPFamily, key captureKey) uint16 {
	t.Helper()
	port, ok := f.target(family, key)
	if !ok {
		t.Fatalf("capture table has no element for %+v", key)
	}
	return port
}

// newTestProxier returns a Proxier with real sockets, a fake capture and clk (nil: real).
func newTestProxier(t *testing.T, cfg Config, clk clock.WithDelayedExecution) (*Proxier, *fakeCapture) {
	t.Helper()
	if cfg.Families == nil {
		cfg.Families = []v1.IPFamily{v1.IPv4Protocol}
	}
	if !cfg.ListenAddress.IsValid() {
		cfg.ListenAddress = netip.MustParseAddr("127.0.0.1")
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(metrics.ModeUserspace)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	capture := newFakeCapture()
	p := newProxier(cfg, clk, nil, capture)
	t.Cleanup(func() { _ = p.Close() })
	return p, capture
}

// metricValue reads one series of a userspace metric.
func refusedCount(p *Proxier, name endpoints.ServicePortName, reason string) float64 {
	return testutil.ToFloat64(p.fwd.cfg.Metrics.UserspaceRefusedTotal.WithLabelValues(name.String(), reason))
}

// activeCount reads the active-connections gauge of a service port.
func activeCount(p *Proxier, name endpoints.ServicePortName) float64 {
	return testutil.ToFloat64(p.fwd.cfg.Metrics.UserspaceActiveConnections.WithLabelValues(name.String()))
}

// eventually polls cond every 10ms for up to 5s (bounded) and fails with msg if it never holds.
func eventually(t *testing.T, msg string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting until %s", msg)
}

// tcpBackend is a loopback TCP server that answers each connection with "<id> <client>\n"
// and then echoes until the client half-closes, then half-closes itself.
type tcpBackend struct {
	id   string
	addr netip.AddrPort
}

// startTCPBackend starts an echo backend on 127.0.0.1 (or addr if valid).
func startTCPBackend(t *testing.T, id string) tcpBackend {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go serveTCPEcho(ln, id)
	return tcpBackend{id: id, addr: addrPortOf(ln.Addr())}
}

// serveTCPEcho runs an echo backend until ln closes.
func serveTCPEcho(ln *net.TCPListener, id string) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if _, err := fmt.Fprintf(c, "%s %s\n", id, c.RemoteAddr()); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
			_ = c.CloseWrite()
		}()
	}
}

// dialProxy connects to a listener port on 127.0.0.1 and reads the backend's greeting line; it
// returns the connection and the backend's id.
func dialProxy(t *testing.T, port uint16) (*net.TCPConn, string, error) {
	c, line, err := dialProxyGreeting(t, port)
	if err != nil {
		return nil, "", err
	}
	return c, strings.Fields(line)[0], nil
}

// dialProxyGreeting connects to a listener port on 127.0.0.1 and returns the greeting line.
func dialProxyGreeting(t *testing.T, port uint16) (*net.TCPConn, string, error) {
	t.Helper()
	c, err := net.DialTCP("tcp4", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		return nil, "", err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(c)
	if err != nil {
		_ = c.Close()
		return nil, "", err
	}
	return c, line, nil
}

// greetingOf connects through the proxy and returns the backend's id, closing the connection.
func greetingOf(t *testing.T, port uint16) string {
	t.Helper()
	c, id, err := dialProxy(t, port)
	if err != nil {
		t.Fatalf("connecting through the proxy: %v", err)
	}
	_ = c.Close()
	return id
}

// isClosed reports whether c was closed by the peer: a read returns EOF or a reset in time.
func isClosed(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var netErr net.Error
	return err != nil && !(errors.As(err, &netErr) && netErr.Timeout())
}

// readLine reads up to and including '\n' one byte at a time, so nothing after it is consumed.
func readLine(c net.Conn) (string, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) < 4096 {
		if _, err := io.ReadFull(c, b); err != nil {
			return string(line), err
		}
		line = append(line, b[0])
		if b[0] == '\n' {
			return string(line), nil
		}
	}
	return string(line), errors.New("line too long")
}
