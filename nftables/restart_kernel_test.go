package nftables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// podNetwork is a node namespace (the proxy's) routing between a client namespace and pod
// namespaces, each on its own veth pair:
//
//	client 192.168.77.2/24 ─ eth0 ── c0 192.168.77.1 [node] pI 10.0.1.(4I+1)/30 ── eth0 10.0.1.(4I+2) pod I
//
// The pod addresses are in testConfig's pod CIDR and local to testNode (makeSlice).
type podNetwork struct {
	node, client *testNetns
	pods         []*testNetns
	podIPs       []netip.Addr
}

// clientIP is the client namespace's address.
var clientIP = netip.MustParseAddr("192.168.77.2")

// newPodNetwork builds a node, a client and n pod namespaces; they are removed when the test
// ends.
func newPodNetwork(t *testing.T, n int) *podNetwork {
	t.Helper()
	pn := &podNetwork{node: newTestNetns(t), client: newTestNetns(t)}
	node := pn.node.name
	sysctl(t, node, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	ipCmd(t, "-n", node, "link", "set", "lo", "up")
	ipCmd(t, "-n", node, "link", "add", "c0", "type", "veth", "peer", "name", "eth0", "netns", pn.client.name)
	ipCmd(t, "-n", node, "addr", "add", "192.168.77.1/24", "dev", "c0")
	ipCmd(t, "-n", node, "link", "set", "c0", "up")
	joinNode(t, pn.client.name, clientIP.String()+"/24", "192.168.77.1")
	for i := range n {
		pod := newTestNetns(t)
		hostSide, gw := fmt.Sprintf("p%d", i), fmt.Sprintf("10.0.1.%d", 4*i+1)
		ip := netip.MustParseAddr(fmt.Sprintf("10.0.1.%d", 4*i+2))
		ipCmd(t, "-n", node, "link", "add", hostSide, "type", "veth", "peer", "name", "eth0", "netns", pod.name)
		ipCmd(t, "-n", node, "addr", "add", gw+"/30", "dev", hostSide)
		ipCmd(t, "-n", node, "link", "set", hostSide, "up")
		joinNode(t, pod.name, ip.String()+"/30", gw)
		pn.pods = append(pn.pods, pod)
		pn.podIPs = append(pn.podIPs, ip)
	}
	return pn
}

// joinNode configures the eth0 of namespace ns: address, up, default route via gw.
func joinNode(t *testing.T, ns, addr, gw string) {
	t.Helper()
	sysctl(t, ns, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	ipCmd(t, "-n", ns, "link", "set", "lo", "up")
	ipCmd(t, "-n", ns, "addr", "add", addr, "dev", "eth0")
	ipCmd(t, "-n", ns, "link", "set", "eth0", "up")
	ipCmd(t, "-n", ns, "route", "add", "default", "via", gw)
}

// ipCmd runs the ip CLI.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// sysctl sets kernel parameters in the named namespace.
func sysctl(t *testing.T, ns string, settings ...string) {
	t.Helper()
	args := append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, settings...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("sysctl %s in %s: %v: %s", strings.Join(settings, " "), ns, err, out)
	}
}

// inNetns runs fn on a thread switched into ns; sockets fn opens stay in ns. If switching back
// fails, the thread is left locked so the runtime discards it.
func inNetns(ns *testNetns, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("getting the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns.handle); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("entering %s: %w", ns.name, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			done <- errors.Join(fnErr, fmt.Errorf("leaving %s: %w", ns.name, err))
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// serveTCPName starts a TCP server on port in ns that writes name to every connection and
// closes it; it stops when the test ends.
func serveTCPName(t *testing.T, ns *testNetns, port int, name string) {
	t.Helper()
	var ln net.Listener
	if err := inNetns(ns, func() (err error) { ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatalf("listening in %s: %v", ns.name, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte(name))
			conn.Close()
		}
	})
}

// connectLoop makes count TCP connections from the client namespace to dst, one every
// interval, each reading the server's name; it returns the failures. done counts the
// connections made so far.
func connectLoop(pn *podNetwork, dst string, want string, count int, interval time.Duration, done *atomic.Int32) []string {
	var failures []string
	err := inNetns(pn.client, func() error {
		for i := range count {
			start := time.Now()
			if err := connectOnce(dst, want); err != nil {
				failures = append(failures, fmt.Sprintf("connection %d: %v", i, err))
			}
			done.Add(1)
			time.Sleep(max(0, interval-time.Since(start)))
		}
		return nil
	})
	if err != nil {
		failures = append(failures, err.Error())
	}
	return failures
}

// connectOnce connects to dst and checks that the server answers want.
func connectOnce(dst, want string) error {
	conn, err := net.DialTimeout("tcp4", dst, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	got, err := io.ReadAll(conn)
	if err != nil {
		return err
	}
	if string(got) != want {
		return fmt.Errorf("answered by %q, want %q", got, want)
	}
	return nil
}

// startProxy starts a fresh Proxier and Core (as a new process would) programming the node
// namespace, feeds them svc and slice and runs their first sync. It returns the sync's
// transaction and duration.
func startProxy(t *testing.T, pn *podNetwork, svc *v1.Service, slice *discovery.EndpointSlice, observers ...proxier.SyncObserver) (*proxier.Core, *Transaction, time.Duration) {
	t.Helper()
	cfg := testConfig()
	cfg.NetNSFd = pn.node.fd()
	rec := &recordingConn{conn: NewNetlinkConn(pn.node.fd())}
	p, err := NewWithConn(cfg, rec)
	if err != nil {
		t.Fatalf("NewWithConn: %v", err)
	}
	core, err := proxier.NewCore(proxier.CoreConfig{NodeName: testNode, Families: cfg.Families, SyncPeriod: time.Second, Observers: observers}, p)
	if err != nil {
		t.Fatalf("NewCore: %v", err)
	}
	core.OnServiceAdd(svc)
	core.OnEndpointSliceAdd(slice)
	core.OnServiceSynced()
	core.OnEndpointSlicesSynced()
	start := time.Now()
	if err := core.SyncNow(context.Background()); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	return core, rec.last, time.Since(start)
}

// upstreamTable is an upstream-shaped (kube-proxy v1.37 nftables mode) table sending
// 172.30.0.1:80/TCP to 10.0.1.2:8080, with its masquerading.
const upstreamTable = `
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add chain ip kube-proxy mark-for-masquerade
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add chain ip kube-proxy masquerading
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority srcnat ; }
add rule ip kube-proxy nat-postrouting jump masquerading
add chain ip kube-proxy services
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nat-output jump services
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add chain ip kube-proxy endpoint-5OJB2KTY-ns/svc-a/tcp/p80__10.0.1.2/8080
add rule ip kube-proxy endpoint-5OJB2KTY-ns/svc-a/tcp/p80__10.0.1.2/8080 ip saddr 10.0.1.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns/svc-a/tcp/p80__10.0.1.2/8080 meta l4proto tcp dnat to 10.0.1.2:8080
add chain ip kube-proxy service-ULMVA6XW-ns/svc-a/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns/svc-a/tcp/p80 ip daddr 172.30.0.1 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns/svc-a/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns/svc-a/tcp/p80__10.0.1.2/8080 }
add element ip kube-proxy service-ips { 172.30.0.1 . tcp . 80 : goto service-ULMVA6XW-ns/svc-a/tcp/p80 }
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
`

// TestKernelRestartKeepsConnecting runs 200 TCP connections (one every 10 ms) from a client
// namespace to a ClusterIP whose endpoint is in a pod namespace, while fresh Proxier and Core
// instances (new processes, with no memory of the old one) take over the node's table with
// their first full sync, twice. No connection may fail. The second case starts from an
// upstream kube-proxy table written with the nft CLI.
func TestKernelRestartKeepsConnecting(t *testing.T) {
	for _, tc := range []struct {
		name     string
		upstream bool
	}{{"over nodeproxy's table", false}, {"over upstream kube-proxy's table", true}} {
		t.Run(tc.name, func(t *testing.T) {
			pn := newPodNetwork(t, 1)
			serveTCPName(t, pn.pods[0], 8080, "pod-0")
			svc, slice := makeService("svc-a", "172.30.0.1"), makeSlice("svc-a", ep{ip: pn.podIPs[0].String()})
			if tc.upstream {
				pn.node.nftScript(t, upstreamTable)
			} else {
				startProxy(t, pn, svc, slice)
			}
			var warm atomic.Int32
			if failures := connectLoop(pn, "172.30.0.1:80", "pod-0", 1, 0, &warm); len(failures) > 0 {
				t.Fatalf("the Service does not answer before the restart: %v", failures)
			}

			const connections = 200
			var done atomic.Int32
			result := make(chan []string, 1)
			var loop sync.WaitGroup
			t.Cleanup(loop.Wait) // before the namespaces go
			loop.Go(func() { result <- connectLoop(pn, "172.30.0.1:80", "pod-0", connections, 10*time.Millisecond, &done) })
			for i, at := range []int32{50, 120} {
				waitFor(t, fmt.Sprintf("%d connections", at), 10*time.Second, func() bool { return done.Load() >= at })
				_, tx, took := startProxy(t, pn, svc, slice)
				if text := tx.String(); !strings.Contains(text, "delete table ip nodeproxy") || !strings.Contains(text, "delete table ip kube-proxy") {
					t.Errorf("restart %d: the first sync did not replace the tables in its transaction", i+1)
				}
				t.Logf("restart %d after %d connections: first full sync took %v", i+1, at, took)
			}
			failures := <-result
			if len(failures) > 0 {
				t.Errorf("%d of %d connections failed across the restarts: %v", len(failures), connections, failures)
			}
			if tables := pn.node.nft(t, "list", "tables"); tables != "table ip nodeproxy\n" {
				t.Errorf("tables after the takeover:\n%s", tables)
			}
		})
	}
}
