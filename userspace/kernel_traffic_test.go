package userspace

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// kernelProxy is a real Proxier in the topology's node namespace and the world it serves:
//
//	web    .10  http 80/TCP → pods :8080, NodePort 30080; dns 53/UDP → pods :5353, NodePort 30053
//	sticky .11  http 80/TCP → pods :8080, sessionAffinity ClientIP
//	flaky  .12  http 80/TCP → pod1 :9999 (refuses), pod2 :8080
//	local  .13  http 80/TCP → pod1 :8080 on another node, NodePort 30081, eTP Local
//	drain  .14  http 80/TCP → pod1 :8080
type kernelProxy struct {
	p     *Proxier
	world *testWorld
}

// newKernelProxy starts the proxy in topo's node namespace and syncs the world.
func newKernelProxy(t *testing.T, topo *kernelTopology, drain time.Duration) *kernelProxy {
	t.Helper()
	p, err := New(Config{Families: []v1.IPFamily{topo.family}, NetNSFd: topo.node.fd(), DialTimeout: time.Second,
		DrainTimeout: drain, Metrics: metrics.New(metrics.ModeUserspace)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	w := newTestWorld(t, topo.family)
	svc := func(name, host string, opts ...serviceOption) {
		w.setService(testService(name, topo.svcAddr(host, 0).Addr().String(), opts...))
	}
	slice := func(service, port string, proto v1.Protocol, ep netip.AddrPort, node string) {
		w.setSlice(endpointSlice(service, port, proto, testEndpoint{addr: ep, node: node}))
	}
	svc("web", "10", withPort("http", v1.ProtocolTCP, 80, 30080), withPort("dns", v1.ProtocolUDP, 53, 30053))
	svc("sticky", "11", withPort("http", v1.ProtocolTCP, 80, 0), withAffinity(600))
	svc("flaky", "12", withPort("http", v1.ProtocolTCP, 80, 0))
	svc("local", "13", withPort("http", v1.ProtocolTCP, 80, 30081), withExternalLocal())
	svc("drain", "14", withPort("http", v1.ProtocolTCP, 80, 0))
	for i := range 2 {
		for _, service := range []string{"web", "sticky"} {
			slice(service, "http", v1.ProtocolTCP, topo.endpoint(i, 8080), "")
		}
		slice("web", "dns", v1.ProtocolUDP, topo.endpoint(i, 5353), "")
	}
	slice("flaky", "http", v1.ProtocolTCP, topo.endpoint(0, 9999), "")
	slice("flaky", "http", v1.ProtocolTCP, topo.endpoint(1, 8080), "")
	slice("local", "http", v1.ProtocolTCP, topo.endpoint(0, 8080), "node-b")
	slice("drain", "http", v1.ProtocolTCP, topo.endpoint(0, 8080), "")
	w.sync(p, true)
	return &kernelProxy{p: p, world: w}
}

func TestKernelTrafficIPv4(t *testing.T) { testKernelTraffic(t, v1.IPv4Protocol) }

func TestKernelTrafficIPv6(t *testing.T) { testKernelTraffic(t, v1.IPv6Protocol) }

// testKernelTraffic sends TCP and UDP through the redirect from a pod, the node and outside.
func testKernelTraffic(t *testing.T, family v1.IPFamily) {
	topo := newKernelTopology(t, family)
	topo.startBackends(t)
	kp := newKernelProxy(t, topo, 2*time.Second)
	testKernelReachability(t, topo)
	testKernelPolicies(t, topo)
	t.Run("listeners cannot be reached without the redirect", func(t *testing.T) {
		internal, _ := kp.p.ports[portKey{family: family, name: webPort}].listenerPorts()
		for _, tc := range []struct {
			from *testNS
			dst  netip.AddrPort
		}{{topo.ext, netip.AddrPortFrom(topo.nodeIP, internal)}, {topo.clientPod, netip.AddrPortFrom(topo.bridgeIP, internal)}} {
			if c, err := dialTCPIn(t, tc.from, tc.dst, time.Second); err == nil {
				_ = c.Close()
				t.Errorf("%s reached the listener directly at %s", tc.from.name, tc.dst)
			}
		}
	})
	t.Run("a terminating endpoint keeps its connection for the drain timeout", func(t *testing.T) {
		testKernelDrain(t, topo, kp)
	})
	t.Run("SCTP", func(t *testing.T) {
		t.Skip("no SCTP sockets on this kernel, and this mode does not proxy SCTP: SCTP ports are " +
			"reported once and skipped (TestSCTPIsReportedOnceAndTheRestWorks)")
	})
}

// testKernelReachability checks the web Service's TCP and UDP ports from every source.
func testKernelReachability(t *testing.T, topo *kernelTopology) {
	web, nodePort := topo.svcAddr("10", 80), netip.AddrPortFrom(topo.nodeIP, 30080)
	loopback := netip.MustParseAddr("127.0.0.1")
	if topo.family == v1.IPv6Protocol {
		loopback = netip.IPv6Loopback()
	}
	t.Run("TCP to the ClusterIP from a pod reaches both endpoints, which see the node", func(t *testing.T) {
		seen := map[string]bool{}
		for range 4 {
			fields, err := tcpGreeting(t, topo.clientPod, web)
			if err != nil {
				t.Fatalf("%v", err)
			}
			seen[fields[0]] = true
			if client := netip.MustParseAddrPort(fields[1]).Addr(); client != topo.bridgeIP {
				t.Errorf("the endpoint saw client %s, want the node's %s", client, topo.bridgeIP)
			}
		}
		if !seen["pod1"] || !seen["pod2"] {
			t.Errorf("4 connections reached %v, want both endpoints", seen)
		}
	})
	for _, tc := range []struct {
		name string
		from *testNS
		dst  netip.AddrPort
	}{
		{"TCP to the ClusterIP from the node", topo.node, web},
		{"TCP to the NodePort from outside", topo.ext, nodePort},
		{"TCP to the NodePort from the node", topo.node, nodePort},
		{"TCP to the NodePort on loopback from the node", topo.node, netip.AddrPortFrom(loopback, 30080)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tcpGreeting(t, tc.from, tc.dst); err != nil {
				t.Errorf("%v", err)
			}
		})
	}
	for _, tc := range []struct {
		name string
		from *testNS
		dst  netip.AddrPort
	}{
		{"UDP to the ClusterIP from a pod is answered from the ClusterIP", topo.clientPod, topo.svcAddr("10", 53)},
		{"UDP to the NodePort from outside is answered from the NodePort", topo.ext, netip.AddrPortFrom(topo.nodeIP, 30053)},
		{"UDP to the ClusterIP from the node is answered from the ClusterIP", topo.node, topo.svcAddr("10", 53)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from, fields, err := udpExchange(t, tc.from, tc.dst)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			if from != tc.dst || len(fields) != 3 || fields[2] != "ping" {
				t.Errorf("answer %v from %s, want an echo from %s", fields, from, tc.dst)
			}
		})
	}
}

// testKernelPolicies checks affinity, failover and externalTrafficPolicy Local.
func testKernelPolicies(t *testing.T, topo *kernelTopology) {
	t.Run("session affinity keeps a pod on one endpoint", func(t *testing.T) {
		first, err := tcpGreeting(t, topo.clientPod, topo.svcAddr("11", 80))
		if err != nil {
			t.Fatalf("%v", err)
		}
		for range 4 {
			if fields, err := tcpGreeting(t, topo.clientPod, topo.svcAddr("11", 80)); err != nil || fields[0] != first[0] {
				t.Fatalf("reached %v (%v), want the pinned %s", fields, err, first[0])
			}
		}
	})
	t.Run("an endpoint that refuses is skipped", func(t *testing.T) {
		for range 4 {
			if fields, err := tcpGreeting(t, topo.clientPod, topo.svcAddr("12", 80)); err != nil || fields[0] != "pod2" {
				t.Fatalf("reached %v (%v), want pod2", fields, err)
			}
		}
	})
	t.Run("eTP Local without a local endpoint resets outside clients but serves the node", func(t *testing.T) {
		localNodePort := netip.AddrPortFrom(topo.nodeIP, 30081)
		if fields, err := tcpGreeting(t, topo.ext, localNodePort); err == nil {
			t.Errorf("outside client reached %v through eTP Local without local endpoints", fields)
		}
		if _, err := tcpGreeting(t, topo.node, localNodePort); err != nil {
			t.Errorf("the node itself was not short-circuited to the cluster endpoints: %v", err)
		}
		if _, err := tcpGreeting(t, topo.clientPod, topo.svcAddr("13", 80)); err != nil {
			t.Errorf("ClusterIP traffic of an eTP Local service: %v", err)
		}
	})
}

// testKernelDrain makes the drain Service's only endpoint terminate behind a new one.
func testKernelDrain(t *testing.T, topo *kernelTopology, kp *kernelProxy) {
	dst := topo.svcAddr("14", 80)
	conn, err := dialTCPIn(t, topo.clientPod, dst, 3*time.Second)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer conn.Close()
	if greeting, err := readLine(conn); err != nil || !strings.HasPrefix(greeting, "pod1 ") {
		t.Fatalf("greeting %q, %v; want pod1's", greeting, err)
	}
	kp.world.setSlice(endpointSlice("drain", "http", v1.ProtocolTCP, testEndpoint{addr: topo.endpoint(0, 8080), terminating: true}))
	kp.world.setSlice(endpointSlice("drain", "http", v1.ProtocolTCP, testEndpoint{addr: topo.endpoint(1, 8080)}))
	kp.world.sync(kp.p, false)
	for range 3 {
		if fields, err := tcpGreeting(t, topo.clientPod, dst); err != nil || fields[0] != "pod2" {
			t.Fatalf("new connection reached %v (%v), want pod2", fields, err)
		}
	}
	assertEcho(t, conn, "still served")
	if !isClosed(conn) {
		t.Errorf("the connection to the terminating endpoint outlived the drain timeout")
	}
}
