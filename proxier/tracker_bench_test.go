package proxier

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

// loadedTracker returns a tracker holding n Services × eps endpoints, all checked out.
func loadedTracker(b *testing.B, n, eps int) (*Tracker, []*discovery.EndpointSlice) {
	b.Helper()
	tr := NewTracker(v1.IPv4Protocol, "node-a")
	slices := make([]*discovery.EndpointSlice, n)
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		tr.UpdateService(nil, testService("ns", name, fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80))
		ips := make([]string, eps)
		for j := range eps {
			ips[j] = fmt.Sprintf("10.%d.%d.%d", 100+j, i/250, i%250+1)
		}
		slices[i] = testSlice("ns", name, name+"-1", []int32{80}, ips...)
		tr.UpdateEndpointSlice(slices[i], false)
	}
	tr.Checkout()
	return tr, slices
}

// BenchmarkTrackerOneEndpointChange measures one slice event plus the Checkout that follows,
// among 10,000 Services × 10 endpoints: the per-change cost of the shared core.
func BenchmarkTrackerOneEndpointChange(b *testing.B) {
	tr, slices := loadedTracker(b, 10000, 10)
	s := slices[5000].DeepCopy()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		s.Endpoints[0].Conditions.Ready = ptr.To(i%2 == 1) // starts ready: flip it on every iteration
		tr.UpdateEndpointSlice(s, false)
		if c := tr.Checkout(); len(c.Changes) != 1 {
			b.Fatalf("checkout has %d changes, want 1", len(c.Changes))
		}
	}
}

// BenchmarkTrackerInitialCheckout measures feeding and checking out 10,000 Services × 10
// endpoints from scratch: the shared core's part of a cold start.
func BenchmarkTrackerInitialCheckout(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		loadedTracker(b, 10000, 10)
	}
}
