package nftables

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/conntrack"
)

// serveUDPName starts a UDP server on port in ns that answers every datagram with name; it
// stops when the test ends.
func serveUDPName(t *testing.T, ns *testNetns, port int, name string) {
	t.Helper()
	var conn net.PacketConn
	if err := inNetns(ns, func() (err error) { conn, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatalf("listening in %s: %v", ns.name, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { conn.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 512)
		for {
			_, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteTo([]byte(name), from)
		}
	})
}

// udpSlice is the EndpointSlice of svc-u with one UDP endpoint at port 8080.
func udpSlice(ip string) *discovery.EndpointSlice {
	s := makeSlice("svc-u", ep{ip: ip})
	s.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
	return s
}

// udpClient is one UDP socket of the client namespace, connected to a Service.
type udpClient struct{ conn *net.UDPConn }

// dialUDP opens the client's socket to dst (its source port stays the same for every datagram).
func dialUDP(t *testing.T, pn *podNetwork, dst string) *udpClient {
	t.Helper()
	var conn *net.UDPConn
	err := inNetns(pn.client, func() error {
		addr, err := net.ResolveUDPAddr("udp4", dst)
		if err == nil {
			conn, err = net.DialUDP("udp4", nil, addr)
		}
		return err
	})
	if err != nil {
		t.Fatalf("opening the client's UDP socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &udpClient{conn: conn}
}

// ask sends one datagram and returns who answered ("" and the error if nobody did within
// 300 ms).
func (c *udpClient) ask() (string, error) {
	if _, err := c.conn.Write([]byte("who")); err != nil {
		return "", err
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 64)
	n, err := c.conn.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// askUntil asks up to 10 times (the first datagrams may be lost to neighbour resolution) and
// returns the first answer.
func (c *udpClient) askUntil(t *testing.T) string {
	t.Helper()
	var err error
	for range 10 {
		var who string
		if who, err = c.ask(); err == nil {
			return who
		}
	}
	t.Fatalf("no answer from the Service: %v", err)
	return ""
}

// TestKernelConntrackFollowsEndpointChange sends datagrams from ONE client UDP socket (one
// source port, hence one conntrack flow) to a ClusterIP. The flow is DNATed to endpoint A;
// then the EndpointSlice replaces A by B (A keeps running and answering). With the shared
// conntrack cleanup as a Core observer, the sync deletes the stale flow and the same socket's
// next datagram reaches B. Without it (the control case) the flow keeps going to A, which
// shows the cleanup is what moves it.
func TestKernelConntrackFollowsEndpointChange(t *testing.T) {
	for _, tc := range []struct {
		name  string
		clean bool
		want  string
	}{{"with conntrack cleanup", true, "pod-1"}, {"control: without cleanup", false, "pod-0"}} {
		t.Run(tc.name, func(t *testing.T) {
			pn := newPodNetwork(t, 2)
			serveUDPName(t, pn.pods[0], 8080, "pod-0")
			serveUDPName(t, pn.pods[1], 8080, "pod-1")
			var observers []proxier.SyncObserver
			if tc.clean {
				cleaner, err := conntrack.NewCleanerAt(pn.node.handle)
				if err != nil {
					t.Fatalf("NewCleanerAt: %v", err)
				}
				t.Cleanup(cleaner.Close)
				observers = append(observers, proxier.NewConntrackObserver(cleaner, nil))
			}
			svc := makeService("svc-u", "172.30.0.1", withProtocol(v1.ProtocolUDP))
			sliceA := udpSlice(pn.podIPs[0].String())
			core, _, _ := startProxy(t, pn, svc, sliceA, observers...)

			client := dialUDP(t, pn, "172.30.0.1:80")
			if who := client.askUntil(t); who != "pod-0" {
				t.Fatalf("before the change the Service answered from %q, want pod-0", who)
			}
			core.OnEndpointSliceUpdate(sliceA, udpSlice(pn.podIPs[1].String()))
			if err := core.SyncNow(t.Context()); err != nil {
				t.Fatalf("sync after the endpoint change: %v", err)
			}
			if who := client.askUntil(t); who != tc.want {
				t.Errorf("after A was replaced by B, the same socket reached %q, want %q", who, tc.want)
			}
		})
	}
}
