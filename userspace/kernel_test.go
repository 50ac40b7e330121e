package userspace

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
)

// kernelTopology is a node with the proxy, a pod bridge with three pods (two endpoints and a
// client) and an outside client on the lan, all in namespaces the test creates:
//
//	ext (lan .100) ── eth0 ── node (lan .11, cbr0 pods .1) ── pod1 (.2), pod2 (.3), client pod (.10)
//
// IPv4: lan 192.0.2.0/24, pods 10.244.1.0/24, Services 10.96.0.0/16.
// IPv6: lan 2001:db8::/64, pods fd00:10:244:1::/64, Services fd00:10:96::/112.
type kernelTopology struct {
	family                  v1.IPFamily
	node, ext, clientPod    *testNS
	endpointPods            [2]*testNS
	nodeIP, bridgeIP, extIP netip.Addr
}

// addrPlan returns the family's address for a host part ("11": 192.0.2.11 or 2001:db8::11) of
// the lan, pod or service range.
func addrPlan(family v1.IPFamily, network, host string) netip.Addr {
	prefixes := map[string][2]string{
		"lan": {"192.0.2.", "2001:db8::"}, "pod": {"10.244.1.", "fd00:10:244:1::"}, "svc": {"10.96.0.", "fd00:10:96::"},
	}
	i := 0
	if family == v1.IPv6Protocol {
		i = 1
	}
	return netip.MustParseAddr(prefixes[network][i] + host)
}

// newKernelTopology builds the namespaces, links, addresses and routes.
func newKernelTopology(t *testing.T, family v1.IPFamily) *kernelTopology {
	t.Helper()
	bits := 24
	if family == v1.IPv6Protocol {
		bits = 64
	}
	topo := &kernelTopology{family: family, node: newTestNS(t, "node"), ext: newTestNS(t, "ext"), clientPod: newTestNS(t, "cli"),
		nodeIP: addrPlan(family, "lan", "11"), bridgeIP: addrPlan(family, "pod", "1"), extIP: addrPlan(family, "lan", "100")}
	topo.endpointPods = [2]*testNS{newTestNS(t, "pod1"), newTestNS(t, "pod2")}

	nodeLan, extLan := vethPair(t, topo.node, "eth0", topo.ext, "eth0")
	topo.node.addAddr(t, nodeLan, fmt.Sprintf("%s/%d", topo.nodeIP, bits))
	topo.ext.addAddr(t, extLan, fmt.Sprintf("%s/%d", topo.extIP, bits))
	topo.node.addDefaultRoute(t, topo.extIP) // node-originated Service traffic needs a route

	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cbr0"}}
	if err := topo.node.nl.LinkAdd(bridge); err != nil {
		t.Fatalf("creating the pod bridge: %v", err)
	}
	if err := topo.node.nl.LinkSetUp(bridge); err != nil {
		t.Fatalf("bringing the pod bridge up: %v", err)
	}
	topo.node.addAddr(t, bridge, fmt.Sprintf("%s/%d", topo.bridgeIP, bits))
	pods := []*testNS{topo.endpointPods[0], topo.endpointPods[1], topo.clientPod}
	for i, pod := range pods {
		hostEnd, podEnd := vethPair(t, topo.node, fmt.Sprintf("veth%d", i), pod, "eth0")
		if err := topo.node.nl.LinkSetMaster(hostEnd, bridge); err != nil {
			t.Fatalf("attaching a pod to the bridge: %v", err)
		}
		pod.addAddr(t, podEnd, fmt.Sprintf("%s/%d", topo.podIP(i), bits))
		pod.addDefaultRoute(t, topo.bridgeIP)
	}
	return topo
}

// podIP returns the address of pods[i] (0, 1: endpoints; 2: the client pod).
func (topo *kernelTopology) podIP(i int) netip.Addr {
	return addrPlan(topo.family, "pod", []string{"2", "3", "10"}[i])
}

// startBackends runs, in each endpoint pod, a TCP echo on 8080 and a UDP echo on 5353 that
// name the pod ("pod1", "pod2") and the client address they see.
func (topo *kernelTopology) startBackends(t *testing.T) {
	t.Helper()
	for i, pod := range topo.endpointPods {
		id := fmt.Sprintf("pod%d", i+1)
		var ln *net.TCPListener
		var udp *net.UDPConn
		var errTCP, errUDP error
		pod.run(t, func() {
			ln, errTCP = net.ListenTCP("tcp", &net.TCPAddr{Port: 8080})
			udp, errUDP = net.ListenUDP("udp", &net.UDPAddr{Port: 5353})
		})
		if errTCP != nil || errUDP != nil {
			t.Fatalf("backends in %s: %v %v", pod.name, errTCP, errUDP)
		}
		t.Cleanup(func() { _ = ln.Close(); _ = udp.Close() })
		go serveTCPEcho(ln, id)
		go serveUDPEcho(udp, id)
	}
}

// serveUDPEcho answers every datagram with "<id> <source> <payload>" until conn closes.
func serveUDPEcho(conn *net.UDPConn, id string) {
	buf := make([]byte, maxDatagram)
	for {
		n, src, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, _ = conn.WriteToUDPAddrPort(fmt.Appendf(nil, "%s %s %s", id, src, buf[:n]), src)
	}
}

// svcAddr returns a Service address of the family.
func (topo *kernelTopology) svcAddr(host string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(addrPlan(topo.family, "svc", host), port)
}

// endpoint returns endpoint pod i's address and port.
func (topo *kernelTopology) endpoint(i int, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(topo.podIP(i), port)
}

// tcpGreeting connects from ns to dst and returns the backend's greeting fields (id, client).
func tcpGreeting(t *testing.T, ns *testNS, dst netip.AddrPort) ([]string, error) {
	t.Helper()
	c, err := dialTCPIn(t, ns, dst, 3*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("reading the greeting through %s: %w", dst, err)
	}
	return strings.Fields(line), nil
}

// dialTCPIn connects from ns to dst within timeout.
func dialTCPIn(t *testing.T, ns *testNS, dst netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	t.Helper()
	var c net.Conn
	var err error
	ns.run(t, func() { c, err = net.DialTimeout("tcp", dst.String(), timeout) })
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.(*net.TCPConn), nil
}

// udpExchange sends one datagram from a fresh socket in ns to dst and returns the reply's
// source and fields.
func udpExchange(t *testing.T, ns *testNS, dst netip.AddrPort) (netip.AddrPort, []string, error) {
	t.Helper()
	var c *net.UDPConn
	var err error
	ns.run(t, func() { c, err = net.ListenUDP(networkOf("udp", dst.Addr()), nil) })
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort([]byte("ping"), dst); err != nil {
		return netip.AddrPort{}, nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 512)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	return netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), strings.Fields(string(buf[:n])), nil
}
