package userspace

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/nodeproxy/nodeproxy/endpoints"
)

// webWorld is a world with Service ns/web (10.96.0.10:80/TCP) and one slice per backend.
func webWorld(t *testing.T, p *Proxier, capture *fakeCapture, opts []serviceOption, backends ...netip.AddrPort) (*testWorld, uint16) {
	t.Helper()
	w := newTestWorld(t, v1.IPv4Protocol)
	w.setService(testService("web", "10.96.0.10", append([]serviceOption{withPort("http", v1.ProtocolTCP, 80, 0)}, opts...)...))
	for _, b := range backends {
		w.setSlice(endpointSlice("web", "http", v1.ProtocolTCP, testEndpoint{addr: b}))
	}
	w.sync(p, true)
	return w, capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.10", v1.ProtocolTCP, 80))
}

var webPort = portName("web", "http", v1.ProtocolTCP)

func TestRoundRobinAcrossEndpoints(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	_, port := webWorld(t, p, capture, nil, a.addr, b.addr)
	seen := map[string]int{}
	var order []string
	for range 4 {
		id := greetingOf(t, port)
		seen[id]++
		order = append(order, id)
	}
	if seen["a"] != 2 || seen["b"] != 2 || order[0] == order[1] {
		t.Errorf("4 connections went %v, want alternating between a and b", order)
	}
}

func TestSessionAffinityKeepsClientOnOneEndpoint(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	_, port := webWorld(t, p, capture, []serviceOption{withAffinity(60)}, a.addr, b.addr)
	first := greetingOf(t, port)
	for i := range 4 {
		if id := greetingOf(t, port); id != first {
			t.Fatalf("connection %d reached %q, want the pinned %q", i+2, id, first)
		}
	}
}

func TestDialFailureFailsOverToTheNextEndpoint(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	live := startTCPBackend(t, "live")
	refusing := closedTCPPort(t)
	_, port := webWorld(t, p, capture, nil, refusing, live.addr)
	for i := range 4 {
		if id := greetingOf(t, port); id != "live" {
			t.Fatalf("connection %d reached %q, want live", i, id)
		}
	}
	// Round robin starts at each endpoint in turn: 2 of 4 connections try the refusing one first.
	if n := testutil.ToFloat64(p.fwd.cfg.Metrics.UserspaceDialErrorsTotal.WithLabelValues(webPort.String())); n != 2 {
		t.Errorf("dial errors %v, want 2", n)
	}
}

func TestAllDialsFailingResetsTheClient(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	_, port := webWorld(t, p, capture, nil, closedTCPPort(t), closedTCPPort(t))
	if _, _, err := dialProxy(t, port); err == nil {
		t.Fatalf("connection with only refusing endpoints got a greeting")
	}
	if n := refusedCount(p, webPort, reasonDialFailed); n != 1 {
		t.Errorf("refused{dial_failed} = %v, want 1", n)
	}
	if n := testutil.ToFloat64(p.fwd.cfg.Metrics.UserspaceDialErrorsTotal.WithLabelValues(webPort.String())); n != 2 {
		t.Errorf("dial errors %v, want 2 (each endpoint once)", n)
	}
}

func TestNoEndpointsResetsTCPAndDropsUDP(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	w, port := webWorld(t, p, capture, nil)
	if _, _, err := dialProxy(t, port); err == nil {
		t.Fatalf("connection without endpoints got a greeting")
	}
	eventually(t, "the refusal is counted", func() bool { return refusedCount(p, webPort, reasonNoEndpoints) == 1 })

	w.setService(testService("dns", "10.96.0.53", withPort("dns", v1.ProtocolUDP, 53, 0)))
	w.sync(p, false)
	udpPort := capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.53", v1.ProtocolUDP, 53))
	c := dialUDPLoopback(t, udpPort)
	if _, err := c.Write([]byte("q")); err != nil {
		t.Fatalf("send: %v", err)
	}
	dnsPort := portName("dns", "dns", v1.ProtocolUDP)
	eventually(t, "the dropped datagram is counted", func() bool { return refusedCount(p, dnsPort, reasonNoEndpoints) == 1 })
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 16)); err == nil {
		t.Errorf("a datagram to a service without endpoints got an answer")
	}
}

func TestConnectionLimitRefusesTheExcess(t *testing.T) {
	p, capture := newTestProxier(t, Config{MaxConnections: 2}, nil)
	a := startTCPBackend(t, "a")
	_, port := webWorld(t, p, capture, nil, a.addr)
	var held []*net.TCPConn
	for range 2 {
		c, _, err := dialProxy(t, port)
		if err != nil {
			t.Fatalf("connection within the limit: %v", err)
		}
		held = append(held, c)
	}
	if _, _, err := dialProxy(t, port); err == nil {
		t.Errorf("a third connection got through a limit of 2")
	}
	if n := refusedCount(p, webPort, reasonConnectionLimit); n != 1 {
		t.Errorf("refused{connection_limit} = %v, want 1", n)
	}
	if n := activeCount(p, webPort); n != 2 {
		t.Errorf("active connections %v, want 2", n)
	}
	_ = held[0].Close()
	eventually(t, "the closed connection frees its slot", func() bool { return p.fwd.tcpSlots.used.Load() == 1 })
	if id := greetingOf(t, port); id != "a" {
		t.Errorf("after a slot freed, reached %q, want a", id)
	}
	_ = held[1].Close()
	eventually(t, "active connections drop to 0", func() bool { return activeCount(p, webPort) == 0 })
}

func TestTerminatingEndpointDrainsOpenConnections(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	p, capture := newTestProxier(t, Config{DrainTimeout: time.Minute}, clk)
	old, next := startTCPBackend(t, "old"), startTCPBackend(t, "next")
	w, port := webWorld(t, p, capture, nil, old.addr)
	conn, id, err := dialProxy(t, port)
	if err != nil || id != "old" {
		t.Fatalf("first connection: %q, %v", id, err)
	}
	defer conn.Close()

	w.setSlice(endpointSlice("web", "http", v1.ProtocolTCP, testEndpoint{addr: old.addr, terminating: true}))
	w.setSlice(endpointSlice("web", "http", v1.ProtocolTCP, testEndpoint{addr: next.addr}))
	w.sync(p, false)
	for range 3 {
		if id := greetingOf(t, port); id != "next" {
			t.Fatalf("new connection reached %q while old terminates, want next", id)
		}
	}
	assertEcho(t, conn, "still here")
	clk.Step(59 * time.Second)
	assertEcho(t, conn, "almost gone")
	clk.Step(time.Second)
	if !isClosed(conn) {
		t.Errorf("the connection to the terminating endpoint outlived the drain timeout")
	}
}

func TestEndpointBackBeforeDrainEndsKeepsConnection(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	p, capture := newTestProxier(t, Config{DrainTimeout: time.Minute}, clk)
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	w, port := webWorld(t, p, capture, []serviceOption{withAffinity(600)}, a.addr)
	conn, _, err := dialProxy(t, port)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	aSlice := endpointSlice("web", "http", v1.ProtocolTCP, testEndpoint{addr: a.addr})
	w.deleteSlice(aSlice.Name)
	w.setSlice(endpointSlice("web", "http", v1.ProtocolTCP, testEndpoint{addr: b.addr}))
	w.sync(p, false)
	if n := drainingFlows(p, webPort); n != 1 {
		t.Fatalf("%d flows drain after their endpoint left, want 1", n)
	}
	w.setSlice(aSlice)
	w.sync(p, false)
	if n := drainingFlows(p, webPort); n != 0 {
		t.Errorf("%d flows still drain after their endpoint came back, want 0", n)
	}
	clk.Step(2 * time.Minute)
	assertEcho(t, conn, "kept")
}

func TestRemovedServicePortDrainsThenCloses(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	p, capture := newTestProxier(t, Config{DrainTimeout: 30 * time.Second}, clk)
	a := startTCPBackend(t, "a")
	w, port := webWorld(t, p, capture, nil, a.addr)
	conn, _, err := dialProxy(t, port)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	w.deleteService("web")
	w.sync(p, false)
	if c, err := net.DialTCP("tcp4", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}); err == nil {
		_ = c.Close()
		t.Errorf("the removed port still accepts")
	}
	assertEcho(t, conn, "in flight")
	clk.Step(30 * time.Second)
	if !isClosed(conn) {
		t.Errorf("the removed port's connection outlived the drain timeout")
	}
}

func TestCloseEndsDrainingConnections(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	p, capture := newTestProxier(t, Config{DrainTimeout: time.Hour}, clk)
	a := startTCPBackend(t, "a")
	w, port := webWorld(t, p, capture, nil, a.addr)
	conn, _, err := dialProxy(t, port)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	w.deleteService("web")
	w.sync(p, false)
	assertEcho(t, conn, "draining")
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !isClosed(conn) {
		t.Errorf("a draining connection of a removed port survived Close")
	}
}

func TestMetricsCountBytesAndConnections(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	a := startTCPBackend(t, "a")
	_, port := webWorld(t, p, capture, nil, a.addr)
	conn, greeting, err := dialProxyGreeting(t, port)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if n := activeCount(p, webPort); n != 1 {
		t.Errorf("active connections %v, want 1", n)
	}
	assertEcho(t, conn, "0123456789")
	_ = conn.Close()
	eventually(t, "the connection ends", func() bool { return activeCount(p, webPort) == 0 })
	m := p.fwd.cfg.Metrics
	if in := testutil.ToFloat64(m.UserspaceBytesTotal.WithLabelValues(webPort.String(), "in")); in != 11 {
		t.Errorf("bytes in %v, want 11", in)
	}
	if out := testutil.ToFloat64(m.UserspaceBytesTotal.WithLabelValues(webPort.String(), "out")); out != float64(len(greeting)+11) {
		t.Errorf("bytes out %v, want %d (greeting and echo)", out, len(greeting)+11)
	}
}

// assertEcho sends msg+"\n" through c and expects it back.
func assertEcho(t *testing.T, c *net.TCPConn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("writing %q: %v", msg, err)
	}
	line, err := readLine(c)
	if err != nil || line != msg+"\n" {
		t.Fatalf("echo of %q: got %q, %v", msg, line, err)
	}
}

// closedTCPPort returns a loopback address where nothing listens (connections are refused).
func closedTCPPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := addrPortOf(ln.Addr())
	_ = ln.Close()
	return addr
}

// dialUDPLoopback returns a UDP socket connected to 127.0.0.1:port.
func dialUDPLoopback(t *testing.T, port uint16) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		t.Fatalf("dial udp: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// drainingFlows counts the IPv4 flows of a service port whose grace period runs.
func drainingFlows(p *Proxier, name endpoints.ServicePortName) int {
	p.mu.Lock()
	pp := p.ports[portKey{family: v1.IPv4Protocol, name: name}]
	p.mu.Unlock()
	pp.mu.Lock()
	defer pp.mu.Unlock()
	n := 0
	for _, draining := range pp.flows {
		if draining {
			n++
		}
	}
	return n
}
