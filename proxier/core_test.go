package proxier

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// recordingBackend records every SyncRequest and fails while failNext is set.
type recordingBackend struct {
	mu       sync.Mutex
	requests []*SyncRequest
	failNext bool
}

func (b *recordingBackend) Sync(_ context.Context, req *SyncRequest) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.requests = append(b.requests, req)
	if b.failNext {
		b.failNext = false
		return errors.New("injected failure")
	}
	return nil
}

func (b *recordingBackend) last() *SyncRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.requests) == 0 {
		return nil
	}
	return b.requests[len(b.requests)-1]
}

// recordingHealth records health calls.
type recordingHealth struct {
	mu              sync.Mutex
	queued, updated int
	node            *v1.Node
}

func (h *recordingHealth) QueuedUpdate(v1.IPFamily) { h.mu.Lock(); h.queued++; h.mu.Unlock() }
func (h *recordingHealth) Updated(v1.IPFamily)      { h.mu.Lock(); h.updated++; h.mu.Unlock() }
func (h *recordingHealth) SyncNode(n *v1.Node)      { h.mu.Lock(); h.node = n; h.mu.Unlock() }

func newTestCore(t *testing.T, families ...v1.IPFamily) (*Core, *recordingBackend, *recordingHealth) {
	t.Helper()
	b, h := &recordingBackend{}, &recordingHealth{}
	c, err := NewCore(CoreConfig{NodeName: "node-a", Families: families, SyncPeriod: 30 * time.Second, Health: h}, b)
	if err != nil {
		t.Fatal(err)
	}
	return c, b, h
}

func TestCoreDoesNotSyncBeforeInitialState(t *testing.T) {
	c, b, h := newTestCore(t, v1.IPv4Protocol)
	c.OnServiceAdd(testService("ns", "web", "10.96.0.10", 80))
	if err := c.SyncNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.last() != nil {
		t.Fatal("backend synced before Services and EndpointSlices were listed")
	}
	if h.queued != 0 {
		t.Errorf("health told of %d queued updates before initialization, want 0", h.queued)
	}
	c.OnServiceSynced()
	if c.Initialized() {
		t.Fatal("initialized with only Services listed")
	}
	c.OnEndpointSlicesSynced()
	if !c.Initialized() {
		t.Fatal("not initialized after both lists")
	}
	if err := c.SyncNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	req := b.last()
	if req == nil || !req.Full || len(req.Checkouts) != 1 || len(req.Checkouts[0].Changes) != 1 {
		t.Fatalf("first sync = %+v, want a full sync with the one queued port", req)
	}
}

func TestCoreFailedSyncMakesNextFull(t *testing.T) {
	c, b, h := newTestCore(t, v1.IPv4Protocol)
	c.OnServiceSynced()
	c.OnEndpointSlicesSynced()
	ctx := context.Background()
	if err := c.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	c.OnServiceAdd(testService("ns", "web", "10.96.0.10", 80))
	if err := c.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	if b.last().Full {
		t.Fatal("a sync after a successful one was full, want partial")
	}
	updatedBefore := h.updated
	b.failNext = true
	c.OnServiceAdd(testService("ns", "api", "10.96.0.11", 80))
	if err := c.SyncNow(ctx); err == nil {
		t.Fatal("backend failure not returned")
	}
	if h.updated != updatedBefore {
		t.Error("health marked updated after a failed sync")
	}
	if err := c.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	if !b.last().Full {
		t.Fatal("the sync after a failure was not full")
	}
	if h.updated != updatedBefore+1 {
		t.Errorf("health updated %d times after recovery, want 1", h.updated-updatedBefore)
	}
	if c.Trackers()[0].ServicePortCount() != 2 {
		t.Errorf("tracker lost state across a failed sync: %d ports", c.Trackers()[0].ServicePortCount())
	}
}

func TestCoreTopologyChangeMakesNextFull(t *testing.T) {
	c, b, _ := newTestCore(t, v1.IPv4Protocol)
	c.OnServiceSynced()
	c.OnEndpointSlicesSynced()
	ctx := context.Background()
	_ = c.SyncNow(ctx)
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "z1"}}}
	c.OnNodeAdd(node)
	if err := c.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	if req := b.last(); !req.Full || req.Node.Zone != "z1" {
		t.Fatalf("after a zone change: full=%t zone=%q, want full with z1", req.Full, req.Node.Zone)
	}
	c.OnNodeUpdate(node, node.DeepCopy())
	_ = c.SyncNow(ctx)
	if b.last().Full {
		t.Error("an unchanged zone still forced a full sync")
	}
}

func TestCoreQueuesHealthAndRunsLoop(t *testing.T) {
	c, b, h := newTestCore(t, v1.IPv4Protocol, v1.IPv6Protocol)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { c.SyncLoop(ctx); close(done) }()
	c.OnServiceSynced()
	c.OnEndpointSlicesSynced()
	svc := testService("ns", "web", "10.96.0.10", 80)
	svc.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::a"}
	c.OnServiceAdd(svc)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if req := b.last(); req != nil && len(req.Checkouts) == 2 && c.Trackers()[1].ServicePortCount() == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c.Trackers()[0].ServicePortCount() != 1 || c.Trackers()[1].ServicePortCount() != 1 {
		t.Fatal("the sync loop did not apply the dual-stack Service to both families")
	}
	h.mu.Lock()
	queued := h.queued
	h.mu.Unlock()
	if queued != 2 {
		t.Errorf("health told of %d queued updates, want 2 (one per family)", queued)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("SyncLoop did not return after cancel")
	}
}

// forcingBackend asks for a full sync while its first sync runs, as a drift monitor may.
type forcingBackend struct {
	recordingBackend
	core   *Core
	forced bool
}

func (b *forcingBackend) Sync(ctx context.Context, req *SyncRequest) error {
	if !b.forced {
		b.forced = true
		b.core.ForceFullSync()
	}
	return b.recordingBackend.Sync(ctx, req)
}

func TestCoreForceFullSyncDuringSyncIsKept(t *testing.T) {
	b := &forcingBackend{}
	c, err := NewCore(CoreConfig{NodeName: "node-a", Families: []v1.IPFamily{v1.IPv4Protocol}, SyncPeriod: time.Minute}, b)
	if err != nil {
		t.Fatal(err)
	}
	b.core = c
	c.OnServiceSynced()
	c.OnEndpointSlicesSynced()
	ctx := context.Background()
	if err := c.SyncNow(ctx); err != nil { // the first sync is full and asks for another
		t.Fatal(err)
	}
	if err := c.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	if !b.last().Full {
		t.Fatal("a full sync requested during a sync was lost")
	}
	if err := c.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	if b.last().Full {
		t.Error("the forced full sync repeated itself")
	}
}
