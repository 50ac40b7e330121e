package nftables

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/vishvananda/netns"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// Kernel benchmarks of the nftables mode through the real Core (tracker checkout included) at
// N ClusterIP Services × 10 endpoints, each in a fresh network namespace. Run as root with
// `make bench` (BENCH=Kernel for these only). They report, besides ns/op:
//   - heap-MiB: the Go heap still in use after the sync (API objects, tracker and proxier state);
//   - ops: the netlink operations the sync sent.

// benchSizes are the Service counts every kernel benchmark runs at.
var benchSizes = []int{1000, 10000}

// benchNetns creates a network namespace for one benchmark iteration and returns its handle
// and a function removing it.
func benchNetns(b *testing.B) (netns.NsHandle, func()) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root: programs nftables in a network namespace")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		b.Fatal(err)
	}
	defer orig.Close()
	name := fmt.Sprintf("np-bench-%d-%d", os.Getpid(), rand.IntN(1<<30))
	h, err := netns.NewNamed(name)
	if err != nil {
		b.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // stuck in the new namespace: let the thread be discarded
		b.Fatal(err)
	}
	return h, func() { h.Close(); _ = netns.DeleteNamed(name) }
}

// benchWorld returns n Services × 10 endpoints as API objects.
func benchWorld(n int) ([]*v1.Service, []*discovery.EndpointSlice) {
	svcs := make([]*v1.Service, n)
	slices := make([]*discovery.EndpointSlice, n)
	for i := range n {
		svcs[i] = makeService(fmt.Sprintf("svc-%d", i), fmt.Sprintf("172.30.%d.%d", i/250, i%250+1))
		slices[i] = largeSlice(i, 10)
	}
	return svcs, slices
}

// benchCore returns a Core over a fresh Proxier programming ns, fed with the world.
func benchCore(b *testing.B, ns netns.NsHandle, svcs []*v1.Service, slices []*discovery.EndpointSlice) (*proxier.Core, *recordingConn) {
	b.Helper()
	cfg := testConfig()
	cfg.NetNSFd = int(ns)
	rec := &recordingConn{conn: NewNetlinkConn(int(ns))}
	p, err := NewWithConn(cfg, rec)
	if err != nil {
		b.Fatal(err)
	}
	core, err := proxier.NewCore(proxier.CoreConfig{NodeName: testNode, Families: cfg.Families, SyncPeriod: 30 * time.Second}, p)
	if err != nil {
		b.Fatal(err)
	}
	for i := range svcs {
		core.OnServiceAdd(svcs[i])
		core.OnEndpointSliceAdd(slices[i])
	}
	core.OnServiceSynced()
	core.OnEndpointSlicesSynced()
	return core, rec
}

// liveHeapMiB returns the Go heap in use after a collection.
func liveHeapMiB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

// BenchmarkKernelFirstFullSync: a fresh proxy's first sync into an empty namespace. Besides
// the live heap after the sync it reports the peak of the heap's objects during it (sampled
// every 200 µs), the figure that with the runtime's overhead makes the proxy's peak RSS; the
// API objects are dropped before the sync, as the informers do.
func BenchmarkKernelFirstFullSync(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			var heap, peak float64
			var ops int
			for range b.N {
				b.StopTimer()
				ns, remove := benchNetns(b)
				svcs, slices := benchWorld(n)
				core, rec := benchCore(b, ns, svcs, slices)
				runtime.GC()
				b.StartTimer()
				var err error
				peak, err = peakHeapMiBDuring(func() error { return core.SyncNow(context.Background()) })
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				heap, ops = liveHeapMiB(), rec.last.Operations()
				runtime.KeepAlive(core) // the state must be alive while the heap is measured
				remove()
				b.StartTimer()
			}
			b.ReportMetric(heap, "heap-MiB")
			b.ReportMetric(peak, "peak-heap-MiB")
			b.ReportMetric(float64(ops), "ops")
		})
	}
}

// peakHeapMiBDuring runs fn and returns the largest size of the heap's objects (live or not
// yet collected) seen while it ran.
func peakHeapMiBDuring(fn func() error) (float64, error) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	done := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var top uint64
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			top = max(top, sample[0].Value.Uint64())
			select {
			case <-done:
				peak <- top
				return
			case <-tick.C:
			}
		}
	}()
	err := fn()
	close(done)
	return float64(<-peak) / (1 << 20), err
}

// BenchmarkKernelRestartSync: a new proxy's first sync over the table an earlier one left. It
// reports the peak of the heap's objects during the sync as BenchmarkKernelFirstFullSync does.
func BenchmarkKernelRestartSync(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			ns, remove := benchNetns(b)
			defer remove()
			svcs, slices := benchWorld(n)
			first, _ := benchCore(b, ns, svcs, slices)
			if err := first.SyncNow(context.Background()); err != nil {
				b.Fatal(err)
			}
			var peak float64
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				svcs, slices := benchWorld(n)
				core, _ := benchCore(b, ns, svcs, slices)
				runtime.GC()
				b.StartTimer()
				var err error
				peak, err = peakHeapMiBDuring(func() error { return core.SyncNow(context.Background()) })
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(peak, "peak-heap-MiB")
		})
	}
}

// BenchmarkKernelOneEndpointChange: one endpoint of one Service changes readiness; the event,
// the checkout and the netlink batch that follow.
func BenchmarkKernelOneEndpointChange(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			svcs, slices := benchWorld(n)
			ns, remove := benchNetns(b)
			defer remove()
			core, rec := benchCore(b, ns, svcs, slices)
			ctx := context.Background()
			if err := core.SyncNow(ctx); err != nil {
				b.Fatal(err)
			}
			s := slices[n/2].DeepCopy()
			b.ResetTimer()
			for i := range b.N {
				s.Endpoints[3].Conditions.Ready = ptr.To(i%2 == 1) // starts ready: flips every time
				core.OnEndpointSliceUpdate(nil, s)
				if err := core.SyncNow(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(rec.last.Operations()), "ops")
			b.ReportMetric(liveHeapMiB(), "heap-MiB")
			runtime.KeepAlive(core) // the state must be alive while the heap is measured
		})
	}
}
