package userspace

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/nodeproxy/nodeproxy/endpoints"
)

func TestSyncCapturesEveryServiceAddress(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	w := newTestWorld(t, v1.IPv4Protocol)
	w.setService(testService("web", "10.96.0.10",
		withPort("http", v1.ProtocolTCP, 80, 30080), withPort("dns", v1.ProtocolUDP, 53, 30053),
		withExternalIPs("203.0.113.7"), withLoadBalancer("203.0.113.8")))
	w.sync(p, true)

	tcp := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolTCP, 80))
	udp := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolUDP, 53))
	want := map[captureKey]uint16{
		serviceKey("10.96.0.10", v1.ProtocolTCP, 80):             tcp,
		serviceKey("203.0.113.7", v1.ProtocolTCP, 80):            tcp,
		serviceKey("203.0.113.8", v1.ProtocolTCP, 80):            tcp,
		{kind: elemNodePort, proto: v1.ProtocolTCP, port: 30080}: tcp,
		{kind: elemListener, proto: v1.ProtocolTCP, port: tcp}:   0,
		serviceKey("10.96.0.10", v1.ProtocolUDP, 53):             udp,
		serviceKey("203.0.113.7", v1.ProtocolUDP, 53):            udp,
		serviceKey("203.0.113.8", v1.ProtocolUDP, 53):            udp,
		{kind: elemNodePort, proto: v1.ProtocolUDP, port: 30053}: udp,
		{kind: elemListener, proto: v1.ProtocolUDP, port: udp}:   0,
	}
	if got := capture.tables[v1.IPv4Protocol]; !equalMaps(got, want) {
		t.Errorf("capture table:\n got %v\nwant %v", got, want)
	}
	if capture.fulls != 1 {
		t.Errorf("full table writes: %d, want 1", capture.fulls)
	}
}

func TestSyncEndpointChangeKeepsListenersAndCapture(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	w := newTestWorld(t, v1.IPv4Protocol)
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	w.setService(testService("web", "10.96.0.10", withPort("http", v1.ProtocolTCP, 80, 0)))
	w.setSlice(endpointSlice("web", "http", v1.ProtocolTCP, testEndpoint{addr: a.addr}))
	w.sync(p, true)
	port := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolTCP, 80))
	if id := greetingOf(t, port); id != "a" {
		t.Fatalf("reached %q, want a", id)
	}

	applies := capture.applies
	w.deleteSlice(endpointSlice("web", "http", v1.ProtocolTCP, testEndpoint{addr: a.addr}).Name)
	w.setSlice(endpointSlice("web", "http", v1.ProtocolTCP, testEndpoint{addr: b.addr}))
	w.sync(p, false)
	if capture.applies != applies {
		t.Errorf("an endpoint change wrote the capture table (%d writes, want %d)", capture.applies, applies)
	}
	if id := greetingOf(t, port); id != "b" {
		t.Errorf("after the endpoint change reached %q, want b", id)
	}
}

func TestSyncRemovedServiceClosesListenerAndDeletesElements(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	w := newTestWorld(t, v1.IPv4Protocol)
	a := startTCPBackend(t, "a")
	w.setService(testService("web", "10.96.0.10", withPort("http", v1.ProtocolTCP, 80, 30080)))
	w.setSlice(endpointSlice("web", "http", v1.ProtocolTCP, testEndpoint{addr: a.addr}))
	w.setService(testService("other", "10.96.0.11", withPort("http", v1.ProtocolTCP, 80, 0)))
	w.sync(p, true)
	port := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolTCP, 80))

	w.deleteService("web")
	w.sync(p, false)
	for key := range capture.tables[v1.IPv4Protocol] {
		if key.port == 80 && key.addr == netip.MustParseAddr("10.96.0.10") || key.port == 30080 || key.port == port {
			t.Errorf("element %+v of the removed service is still captured", key)
		}
	}
	if _, ok := capture.target(v1.IPv4Protocol, serviceKey("10.96.0.11", v1.ProtocolTCP, 80)); !ok {
		t.Errorf("the other service lost its element")
	}
	if c, err := net.DialTCP("tcp4", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}); err == nil {
		_ = c.Close()
		t.Errorf("the removed service's listener still accepts")
	}
}

func TestSyncExternalPolicyLocalUsesAnExternalListener(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	w := newTestWorld(t, v1.IPv4Protocol)
	w.setService(testService("web", "10.96.0.10", withPort("http", v1.ProtocolTCP, 80, 30080),
		withLoadBalancer("203.0.113.8"), withExternalLocal()))
	w.sync(p, true)
	internal := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolTCP, 80))
	external := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("203.0.113.8", v1.ProtocolTCP, 80))
	nodePort := capture.listenerPortOf(t, v1.IPv4Protocol, captureKey{kind: elemNodePort, proto: v1.ProtocolTCP, port: 30080})
	if internal == external || nodePort != external {
		t.Errorf("ClusterIP → %d, LB IP → %d, NodePort → %d: want the LB IP and NodePort on a listener of their own", internal, external, nodePort)
	}

	w.setService(testService("web", "10.96.0.10", withPort("http", v1.ProtocolTCP, 80, 30080), withLoadBalancer("203.0.113.8")))
	w.sync(p, false)
	if got := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("203.0.113.8", v1.ProtocolTCP, 80)); got != internal {
		t.Errorf("with eTP Cluster the LB IP goes to %d, want the shared listener %d", got, internal)
	}
	if _, ok := capture.target(v1.IPv4Protocol, captureKey{kind: elemListener, proto: v1.ProtocolTCP, port: external}); ok {
		t.Errorf("the closed external listener's port is still in listener-ports")
	}
}

func TestSCTPIsReportedOnceAndTheRestWorks(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	var reports []endpoints.ServicePortName
	p.reportUnsupported = func(name endpoints.ServicePortName, _ v1.Protocol) { reports = append(reports, name) }
	w := newTestWorld(t, v1.IPv4Protocol)
	a := startTCPBackend(t, "a")
	w.setService(testService("mixed", "10.96.0.10", withPort("http", v1.ProtocolTCP, 80, 0), withPort("sig", v1.ProtocolSCTP, 3868, 0)))
	w.setSlice(endpointSlice("mixed", "http", v1.ProtocolTCP, testEndpoint{addr: a.addr}))
	w.setSlice(endpointSlice("mixed", "sig", v1.ProtocolSCTP, testEndpoint{addr: netip.MustParseAddrPort("127.0.0.1:3868")}))
	w.sync(p, true)
	w.setSlice(endpointSlice("mixed", "sig", v1.ProtocolSCTP, testEndpoint{addr: netip.MustParseAddrPort("127.0.0.1:3869")}))
	w.sync(p, false)
	w.sync(p, true)

	if len(reports) != 1 || reports[0] != portName("mixed", "sig", v1.ProtocolSCTP) {
		t.Errorf("unsupported reports %v, want the SCTP port exactly once", reports)
	}
	for key := range capture.tables[v1.IPv4Protocol] {
		if key.proto == v1.ProtocolSCTP {
			t.Errorf("SCTP element %+v captured without a listener", key)
		}
	}
	port := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolTCP, 80))
	if id := greetingOf(t, port); id != "a" {
		t.Errorf("TCP port of the same service reached %q, want a", id)
	}

	w.deleteService("mixed")
	w.sync(p, false)
	w.setService(testService("mixed", "10.96.0.10", withPort("sig", v1.ProtocolSCTP, 3868, 0)))
	w.sync(p, false)
	if len(reports) != 2 {
		t.Errorf("a re-created SCTP port was reported %d times in all, want 2 (once per life)", len(reports))
	}
}

// fakeListener is a listener for a protocol the test pretends to support.
type fakeListener struct {
	port   uint16
	closed bool
}

func (l *fakeListener) Port() uint16 { return l.port }
func (l *fakeListener) Close() error { l.closed = true; return nil }

// sctpOpener opens fake SCTP listeners and real ones for the rest.
type sctpOpener struct {
	real   opener
	opened []*fakeListener
}

func (o *sctpOpener) Open(proto v1.Protocol, addr netip.Addr, pp *portProxy, class listenerClass) (listener, error) {
	if proto != v1.ProtocolSCTP {
		return o.real.Open(proto, addr, pp, class)
	}
	l := &fakeListener{port: uint16(40000 + len(o.opened))}
	o.opened = append(o.opened, l)
	return l, nil
}

func TestSCTPThroughAListenerInterfaceIsCapturedLikeTCP(t *testing.T) {
	cfg, _ := Config{Families: []v1.IPFamily{v1.IPv4Protocol}, ListenAddress: netip.MustParseAddr("127.0.0.1")}.withDefaults()
	capture := newFakeCapture()
	op := &sctpOpener{}
	p := newProxier(cfg, clocktesting.NewFakeClock(time.Now()), op, capture)
	op.real = socketOpener{sockets: p.fwd.sockets}
	t.Cleanup(func() { _ = p.Close() })
	w := newTestWorld(t, v1.IPv4Protocol)
	w.setService(testService("sig", "10.96.0.20", withPort("sig", v1.ProtocolSCTP, 3868, 31868)))
	w.sync(p, true)
	if len(op.opened) != 1 {
		t.Fatalf("opened %d SCTP listeners, want 1", len(op.opened))
	}
	port := op.opened[0].port
	if got := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.20", v1.ProtocolSCTP, 3868)); got != port {
		t.Errorf("SCTP ClusterIP goes to %d, want the listener's %d", got, port)
	}
	if got := capture.listenerPortOf(t, v1.IPv4Protocol, captureKey{kind: elemNodePort, proto: v1.ProtocolSCTP, port: 31868}); got != port {
		t.Errorf("SCTP NodePort goes to %d, want %d", got, port)
	}
	w.deleteService("sig")
	w.sync(p, false)
	if !op.opened[0].closed {
		t.Errorf("the removed SCTP port's listener was not closed")
	}
}

func TestSyncFailureCountsAndRetriesWithAFullRebuild(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	w := newTestWorld(t, v1.IPv4Protocol)
	w.setService(testService("web", "10.96.0.10", withPort("http", v1.ProtocolTCP, 80, 0)))
	w.sync(p, true)
	w.setService(testService("dns", "10.96.0.53", withPort("dns", v1.ProtocolUDP, 53, 0)))
	capture.failNext = errors.New("netlink said no")
	if err := p.Sync(t.Context(), w.request(false)); err == nil {
		t.Fatalf("Sync succeeded although the capture failed")
	}
	if n := testutil.ToFloat64(p.fwd.cfg.Metrics.UserspaceSyncFailuresTotal.WithLabelValues("IPv4")); n != 1 {
		t.Errorf("sync failures %v, want 1", n)
	}
	fulls := capture.fulls
	w.sync(p, false)
	if capture.fulls != fulls+1 {
		t.Errorf("the sync after a failure was not a full rebuild")
	}
	capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.53", v1.ProtocolUDP, 53))
	capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolTCP, 80))
}

func TestConflictingServicesShareAKeyFirstWins(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	w := newTestWorld(t, v1.IPv4Protocol)
	w.setService(testService("first", "10.96.0.10", withPort("http", v1.ProtocolTCP, 80, 0), withExternalIPs("203.0.113.7")))
	w.sync(p, false)
	w.setService(testService("second", "10.96.0.11", withPort("http", v1.ProtocolTCP, 80, 0), withExternalIPs("203.0.113.7")))
	w.sync(p, false)
	ext := serviceKey("203.0.113.7", v1.ProtocolTCP, 80)
	first := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolTCP, 80))
	second := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.11", v1.ProtocolTCP, 80))
	if got := capture.listenerPortOf(t, v1.IPv4Protocol, ext); got != first {
		t.Errorf("shared externalIP goes to %d, want the first service's %d", got, first)
	}
	w.deleteService("first")
	w.sync(p, false)
	if got := capture.listenerPortOf(t, v1.IPv4Protocol, ext); got != second {
		t.Errorf("after the first service went, the externalIP goes to %d, want the second's %d", got, second)
	}
}

func TestCloseRemovesCaptureAndListeners(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	w := newTestWorld(t, v1.IPv4Protocol)
	w.setService(testService("web", "10.96.0.10", withPort("http", v1.ProtocolTCP, 80, 0)))
	w.sync(p, true)
	port := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolTCP, 80))
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !capture.removed {
		t.Errorf("Close left the capture tables")
	}
	if c, err := net.DialTCP("tcp4", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}); err == nil {
		_ = c.Close()
		t.Errorf("a listener survived Close")
	}
	if err := p.Sync(t.Context(), w.request(false)); err == nil {
		t.Errorf("Sync after Close succeeded")
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	cfg, err := Config{Families: []v1.IPFamily{v1.IPv6Protocol}}.withDefaults()
	if err != nil {
		t.Fatalf("withDefaults: %v", err)
	}
	if cfg.DialTimeout != 5*time.Second || cfg.MaxConnections != DefaultMaxConnections || cfg.Metrics == nil {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if got := cfg.listenAddr(v1.IPv6Protocol); got != netip.IPv6Unspecified() {
		t.Errorf("IPv6 listeners bind %v, want ::", got)
	}
	for name, bad := range map[string]Config{
		"no family":          {},
		"repeated family":    {Families: []v1.IPFamily{v1.IPv4Protocol, v1.IPv4Protocol}},
		"negative limit":     {Families: []v1.IPFamily{v1.IPv4Protocol}, MaxConnections: -1},
		"foreign listen":     {Families: []v1.IPFamily{v1.IPv4Protocol}, ListenAddress: netip.MustParseAddr("::1")},
		"negative dial time": {Families: []v1.IPFamily{v1.IPv4Protocol}, DialTimeout: -time.Second},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// equalMaps compares two capture tables.
func equalMaps(a, b map[captureKey]uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
