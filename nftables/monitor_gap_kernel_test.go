package nftables

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKernelDriftBeforeTheMonitorStarts: the monitor starts after the first sync (as the
// proxy starts it); a foreign change in between is noticed by its generation and repaired,
// and without one the monitor's start fires nothing.
func TestKernelDriftBeforeTheMonitorStarts(t *testing.T) {
	for _, foreign := range []bool{false, true} {
		name := "no change"
		if foreign {
			name = "table flushed"
		}
		t.Run(name, func(t *testing.T) {
			ns := newTestNetns(t)
			p, core := newKernelCore(t, ns)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			t.Cleanup(func() { cancel(); wg.Wait() })
			wg.Go(func() { core.SyncLoop(ctx) })
			core.OnServiceAdd(makeService("svc-a", "172.30.0.1"))
			core.OnEndpointSliceAdd(makeSlice("svc-a", ep{ip: "10.0.1.1"}))
			core.OnServiceSynced()
			core.OnEndpointSlicesSynced()
			mc := &monitoredCore{ns: ns, p: p, core: core}
			waitFor(t, "the first sync", 5*time.Second, func() bool { return strings.Contains(mc.table(), "172.30.0.1 . tcp . 80") })
			want := mc.table()
			if foreign {
				ns.nft(t, "flush", "table", "ip", TableName)
			}
			var drift atomic.Int32
			wg.Go(func() { p.Run(ctx, func() { drift.Add(1); core.ForceFullSync() }) })
			waitFor(t, "the drift monitor to start", 5*time.Second, func() bool { return p.monitor.Load() != nil })
			if foreign {
				waitFor(t, "the flushed table to be repaired", 3*time.Second, func() bool { return mc.table() == want })
			}
			mc.quiesce(t)
			wantDrift := int32(0)
			if foreign {
				wantDrift = 1
			}
			if got := drift.Load(); got != wantDrift {
				t.Errorf("the drift callback fired %d times, want %d", got, wantDrift)
			}
		})
	}
}
