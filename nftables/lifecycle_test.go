package nftables

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	gnft "github.com/google/nftables"
	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/proxiertest"
)

// countElements counts the elements of a set in a namespace, over netlink.
func countElements(t *testing.T, ns *testNetns, fam gnft.TableFamily, set string) int {
	t.Helper()
	conn, err := gnft.New(gnft.WithNetNSFd(ns.fd()))
	if err != nil {
		t.Fatal(err)
	}
	s, err := conn.GetSetByName(&gnft.Table{Family: fam, Name: TableName}, set)
	if err != nil {
		t.Fatalf("getting set %s: %v", set, err)
	}
	els, err := conn.GetSetElements(s)
	if err != nil {
		t.Fatalf("listing set %s: %v", set, err)
	}
	return len(els)
}

// cpuTime is the CPU time the process has used (user and system): under load it tells more
// than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// liveHeap returns the bytes of live heap objects after a garbage collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// largeSlice returns the slice of svc-<i> with n remote endpoints.
func largeSlice(i, n int) *discovery.EndpointSlice {
	var eps []ep
	for j := range n {
		eps = append(eps, ep{ip: fmt.Sprintf("10.%d.%d.%d", 100+j, i/250, i%250+1)})
	}
	return makeSlice(fmt.Sprintf("svc-%d", i), eps...)
}

// TestKernelLargeState programs 10,000 Services × 10 endpoints into a fresh namespace, restarts
// over it, and changes one endpoint. The durations are logged, not asserted.
func TestKernelLargeState(t *testing.T) {
	if testing.Short() {
		t.Skip("large state: skipped in -short mode")
	}
	const services, perService = 10000, 10
	env, ns := newKernelEnv(t, testConfig())
	for i := range services {
		env.add(makeService(fmt.Sprintf("svc-%d", i), fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)), largeSlice(i, perService))
	}
	env.tracker.Checkout() // Core checks out before calling the backend: not part of Sync
	heapBefore := liveHeap()
	start, cpu := time.Now(), cpuTime()
	req := &proxier.SyncRequest{Full: true, Node: env.node, Checkouts: []*proxier.Checkout{{Family: v1.IPv4Protocol}}, Trackers: []*proxier.Tracker{env.tracker}}
	if err := env.p.Sync(context.Background(), req); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	took, used := time.Since(start), cpuTime()-cpu
	t.Logf("first full sync of %d Services × %d endpoints (%d operations): %v (process CPU %v; the proxier keeps %d MiB)",
		services, perService, env.rec.last.Operations(), took, used, (int64(liveHeap())-int64(heapBefore))>>20)
	if got := countElements(t, ns, gnft.TableFamilyIPv4, "vip-endpoints"); got != services*perService {
		t.Fatalf("vip-endpoints holds %d elements, want %d", got, services*perService)
	}

	restarted, err := NewWithConn(testConfig(), env.rec)
	if err != nil {
		t.Fatal(err)
	}
	env.p = restarted
	start, cpu = time.Now(), cpuTime()
	if err := env.p.Sync(context.Background(), req); err != nil {
		t.Fatalf("sync after a restart: %v", err)
	}
	t.Logf("full sync after a restart over the same table: %v (process CPU %v)", time.Since(start), cpuTime()-cpu)
	if got := countElements(t, ns, gnft.TableFamilyIPv4, "vip-endpoints"); got != services*perService {
		t.Fatalf("after the restart vip-endpoints holds %d elements, want %d", got, services*perService)
	}

	slice := largeSlice(4321, perService)
	slice.Endpoints[3].Addresses = []string{"10.99.0.1"}
	env.add(makeService("svc-4321", "172.30.17.72"), slice)
	start = time.Now()
	env.sync(false)
	t.Logf("one endpoint change (%d operations): %v", env.rec.last.Operations(), time.Since(start))
	if n := env.rec.last.Operations(); n != 2 {
		t.Errorf("one endpoint change took %d operations, want 2:\n%s", n, env.rec.last)
	}
}

// dualStackSync syncs one Service in both families through p.
func dualStackSync(t *testing.T, p *Proxier) {
	t.Helper()
	var req proxier.SyncRequest
	req.Full, req.Node = true, testEnvNode()
	for _, f := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		tr := proxier.NewTracker(f, testNode)
		svc := makeService("dual", "172.30.0.1")
		svc.Spec.ClusterIPs = []string{"172.30.0.1", "fd00:30::1"}
		tr.UpdateService(nil, svc)
		slice := makeSlice("dual", ep{ip: "10.0.2.1"})
		if f == v1.IPv6Protocol {
			slice = makeSlice("dual", ep{ip: "fd00:2::1"})
			slice.AddressType = discovery.AddressTypeIPv6
		}
		tr.UpdateEndpointSlice(slice, false)
		req.Checkouts = append(req.Checkouts, tr.Checkout())
		req.Trackers = append(req.Trackers, tr)
	}
	if err := p.Sync(context.Background(), &req); err != nil {
		t.Fatalf("dual-stack sync: %v", err)
	}
}

// TestKernelTakeover starts over tables left by an earlier nodeproxy and by upstream
// kube-proxy: one transaction replaces ours and deletes theirs; Cleanup removes everything.
func TestKernelTakeover(t *testing.T) {
	ns := newTestNetns(t)
	ns.nftScript(t, `
add table ip kube-proxy
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add table ip6 kube-proxy
add set ip6 kube-proxy cluster-ips { type ipv6_addr ; }
add table ip nodeproxy
add chain ip nodeproxy leftover
add set ip nodeproxy leftover-set { type ipv4_addr ; }
`)
	cfg := Config{Families: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, NetNSFd: ns.fd()}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dualStackSync(t, p)
	tables := ns.nft(t, "list", "tables")
	if want := "table ip nodeproxy\ntable ip6 nodeproxy\n"; tables != want {
		t.Errorf("tables after takeover:\n%s\nwant:\n%s", tables, want)
	}
	if _, err := ns.tryNFT("list", "chain", "ip", "nodeproxy", "leftover"); err == nil {
		t.Error("the leftover chain of the earlier table survived")
	}
	before := ns.nft(t, "list", "ruleset")
	if !strings.Contains(before, "fd00:30::1 . tcp . 80") || !strings.Contains(before, "172.30.0.1 . tcp . 80") {
		t.Errorf("dual-stack Service missing from the ruleset:\n%s", before)
	}

	restarted, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dualStackSync(t, restarted)
	if after := ns.nft(t, "list", "ruleset"); after != before {
		t.Errorf("a restart changed the ruleset:%s", diffLines(strings.Split(after, "\n"), strings.Split(before, "\n")))
	}

	ns.nftScript(t, "add table ip kube-proxy")
	for i := range 2 {
		if err := Cleanup(ns.fd()); err != nil {
			t.Fatalf("Cleanup #%d: %v", i+1, err)
		}
	}
	if tables := ns.nft(t, "list", "tables"); tables != "" {
		t.Errorf("tables left after Cleanup:\n%s", tables)
	}
}

// TestPacketFlowKernel runs the shared packet-flow cases against the kernel, in both families.
func TestPacketFlowKernel(t *testing.T) {
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		t.Run(string(family), func(t *testing.T) {
			cfg := proxiertest.NewConfig(family)
			proxiertest.RunKernel(t, cfg, func(t *testing.T, nodeNS netns.NsHandle, cfg proxiertest.Config) proxier.Backend {
				p, err := New(worldConfig(cfg, int(nodeNS)))
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return p
			})
		})
	}
}
