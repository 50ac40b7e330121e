package nftables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gnft "github.com/google/nftables"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// monitoredCore is a Proxier in a test namespace driven by a Core's sync loop, with the drift
// monitor running and counting its callbacks.
type monitoredCore struct {
	ns    *testNetns
	p     *Proxier
	core  *proxier.Core
	drift atomic.Int32
	// driftAt is when the callback last fired.
	mu      sync.Mutex
	driftAt time.Time
}

// startMonitoredCore starts the Core's sync loop and the drift monitor; both stop when the
// test ends, before its namespace is removed.
func startMonitoredCore(t *testing.T) *monitoredCore {
	t.Helper()
	ns := newTestNetns(t)
	p, core := newKernelCore(t, ns)
	mc := &monitoredCore{ns: ns, p: p, core: core}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { core.SyncLoop(ctx) })
	wg.Go(func() {
		p.Run(ctx, func() {
			mc.mu.Lock()
			mc.driftAt = time.Now()
			mc.mu.Unlock()
			mc.drift.Add(1)
			core.ForceFullSync()
		})
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitFor(t, "the drift monitor to start", 5*time.Second, func() bool { return p.monitor.Load() != nil })
	return mc
}

// newKernelCore returns a Proxier programming ns and a Core driving it (not started).
func newKernelCore(t *testing.T, ns *testNetns) (*Proxier, *proxier.Core) {
	t.Helper()
	cfg := testConfig()
	cfg.NetNSFd = ns.fd()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	core, err := proxier.NewCore(proxier.CoreConfig{NodeName: testNode, Families: cfg.Families, SyncPeriod: time.Second}, p)
	if err != nil {
		t.Fatalf("NewCore: %v", err)
	}
	return p, core
}

// waitFor polls cond every 10 ms until it holds, failing the test after bound.
func waitFor(t *testing.T, what string, bound time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > bound {
			t.Fatalf("timed out after %v waiting for %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// quiesce waits until the monitor has read every notification up to the current generation.
func (mc *monitoredCore) quiesce(t *testing.T) {
	t.Helper()
	waitFor(t, "the monitor to read every notification", 5*time.Second, func() bool {
		m := mc.p.monitor.Load()
		if m == nil {
			return false
		}
		gen, err := m.gens.current()
		return err == nil && m.det.generation() == gen
	})
}

// table lists our table with the nft CLI, its chains, sets and maps sorted (a rebuild creates
// them in another order than the syncs that added them one by one); "" if it does not exist.
func (mc *monitoredCore) table() string {
	out, err := mc.ns.tryNFT("list", "table", "ip", TableName)
	if err != nil {
		return ""
	}
	var blocks []string
	var cur []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, "\t\t") && line != "\t}" {
			cur = nil // a chain, set or map starts
		}
		cur = append(cur, line)
		if line == "\t}" {
			blocks = append(blocks, strings.Join(cur, "\n"))
			cur = nil
		}
	}
	slices.Sort(blocks)
	return strings.Join(blocks, "\n")
}

// TestKernelDriftRepair checks that the proxier's own syncs never look like drift, and that
// another process flushing or deleting its table, or flushing one of its maps, is repaired:
// the callback fires once per foreign change and the Core's next full sync brings the
// ruleset back. The detection and repair times are logged.
func TestKernelDriftRepair(t *testing.T) {
	mc := startMonitoredCore(t)
	svc := makeService("svc-a", "172.30.0.1", withNodePort(30080))
	mc.core.OnServiceAdd(svc)
	mc.core.OnEndpointSliceAdd(makeSlice("svc-a", ep{ip: "10.0.1.1"}, ep{ip: "10.0.2.1"}))
	mc.core.OnServiceSynced()
	mc.core.OnEndpointSlicesSynced()
	waitFor(t, "the first sync", 5*time.Second, func() bool { return strings.Contains(mc.table(), "172.30.0.1 . tcp . 80") })

	// Own changes: new and removed Services, endpoint changes (elements and count chains).
	other := makeService("svc-b", "172.30.0.2")
	mc.core.OnServiceAdd(other)
	mc.core.OnEndpointSliceAdd(makeSlice("svc-b", ep{ip: "10.0.2.7"}))
	mc.core.OnEndpointSliceUpdate(nil, makeSlice("svc-a", ep{ip: "10.0.1.1"}, ep{ip: "10.0.2.1"}, ep{ip: "10.0.2.2"}))
	waitFor(t, "svc-b and the third endpoint", 5*time.Second, func() bool {
		tbl := mc.table()
		return strings.Contains(tbl, "172.30.0.2 . tcp . 80") && strings.Contains(tbl, "10.0.2.2 . 8080")
	})
	mc.core.OnServiceDelete(other)
	mc.core.OnEndpointSliceUpdate(nil, makeSlice("svc-a", ep{ip: "10.0.2.2"}))
	waitFor(t, "svc-b's removal", 5*time.Second, func() bool { return !strings.Contains(mc.table(), "172.30.0.2 . tcp . 80") })
	mc.core.ForceFullSync()
	mc.quiesce(t)
	if n := mc.drift.Load(); n != 0 {
		t.Fatalf("own syncs fired the drift callback %d times", n)
	}
	want := mc.table()

	for i, cmd := range [][]string{
		{"flush", "table", "ip", TableName},
		{"delete", "table", "ip", TableName},
		{"flush", "map", "ip", TableName, "service-ips"},
		{"delete", "element", "ip", TableName, "vip-endpoints", "{ 172.30.0.1 . tcp . 80 . 0x00000000 }"},
	} {
		changed := time.Now()
		mc.ns.nft(t, cmd...)
		repaired := waitFor(t, "the ruleset to be repaired after nft "+strings.Join(cmd, " "), 3*time.Second, func() bool { return mc.table() == want })
		mc.quiesce(t)
		mc.mu.Lock()
		detected := mc.driftAt.Sub(changed)
		mc.mu.Unlock()
		t.Logf("nft %s: callback %v after the command started, ruleset back %v after it returned (polled every 10 ms)", strings.Join(cmd, " "), detected, repaired)
		if n := mc.drift.Load(); n != int32(i+1) {
			t.Fatalf("after %d foreign changes the callback fired %d times, want once per change (no loop on own repairs)", i+1, n)
		}
	}
}

// TestKernelDriftMonitorOwnLargeSync checks that a large own sync (a notification per element)
// is not taken for drift, also when the notifications overflow the socket buffer and are lost.
func TestKernelDriftMonitorOwnLargeSync(t *testing.T) {
	if testing.Short() {
		t.Skip("large state: skipped in -short mode")
	}
	for _, tc := range []struct {
		name   string
		buffer int
	}{{"default buffer", monitorReceiveBuffer}, {"overflowing buffer", 8 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			defer func(size int) { monitorReceiveBuffer = size }(monitorReceiveBuffer)
			monitorReceiveBuffer = tc.buffer
			mc := startMonitoredCore(t)
			const services = 3000
			for i := range services {
				mc.core.OnServiceAdd(makeService(fmt.Sprintf("svc-%d", i), fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)))
				mc.core.OnEndpointSliceAdd(largeSlice(i, 10))
			}
			mc.core.OnServiceSynced()
			mc.core.OnEndpointSlicesSynced()
			waitFor(t, "the large sync", 30*time.Second, func() bool {
				_, err := mc.ns.tryNFT("list", "chain", "ip", TableName, "dnat-vip-10")
				return err == nil
			})
			if n := countElements(t, mc.ns, gnft.TableFamilyIPv4, "vip-endpoints"); n != services*10 {
				t.Fatalf("vip-endpoints holds %d elements, want %d", n, services*10)
			}
			mc.quiesce(t)
			t.Logf("notifications lost %d times", mc.p.monitor.Load().overflows.Load())
			if n := mc.drift.Load(); n != 0 {
				t.Fatalf("a large own sync fired the drift callback %d times", n)
			}
		})
	}
}
