package proxier

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier/runner"
)

// FullSyncPeriod is how often Core asks its backend for a full sync even with no failure or
// topology change, as upstream kube-proxy does.
const FullSyncPeriod = time.Hour

// Backend is one proxy mode's data plane. Core calls Sync from one goroutine at a time.
type Backend interface {
	// Sync programs the data plane for req in one transaction. On error Core forgets nothing:
	// the next request is a full one.
	Sync(ctx context.Context, req *SyncRequest) error
}

// SyncRequest is one batch of work for a Backend.
type SyncRequest struct {
	// Full asks the backend to program the whole state from Trackers (startup, after a failed
	// sync, after a topology change, and every FullSyncPeriod), not just Checkouts.
	Full bool
	// Node is the proxy's node as endpoint choice sees it.
	Node endpoints.Node
	// Checkouts hold, per IP family, the service ports that changed since the previous request.
	Checkouts []*Checkout
	// Trackers hold the whole applied state, per IP family, in the order of Checkouts.
	Trackers []*Tracker
}

// HealthRecorder is told when updates are queued and applied (proxier/healthcheck.ProxyHealth).
type HealthRecorder interface {
	QueuedUpdate(family v1.IPFamily)
	Updated(family v1.IPFamily)
	SyncNode(node *v1.Node)
}

// CoreConfig configures a Core.
type CoreConfig struct {
	// NodeName is this node's name.
	NodeName string
	// Families are the IP families to proxy (one Tracker each).
	Families []v1.IPFamily
	// MinSyncPeriod is the least time between the end of one sync and the start of the next.
	MinSyncPeriod time.Duration
	// SyncPeriod is the retry interval after a failed sync (and half the healthz timeout).
	SyncPeriod time.Duration
	// Health records queued and applied updates (optional).
	Health HealthRecorder
	// Observers are told about each sync's outcome (metrics, health-check node ports, conntrack).
	Observers []SyncObserver
	// Clock is the time source (nil: the real clock).
	Clock clock.Clock
}

// SyncObserver is told the outcome of every sync, after the backend returned.
type SyncObserver interface {
	// Event is called after every Service or EndpointSlice event (kind "service" or
	// "endpointslice") with the number of Services then pending of each kind.
	Event(family v1.IPFamily, kind string, pendingServices, pendingEndpoints int)
	// Synced is called after each sync with its request, how long it took and its error.
	Synced(req *SyncRequest, took time.Duration, err error)
}

// Core implements Provider for a Backend: it owns the trackers, the sync runner and the sync
// bookkeeping, so every proxy mode handles events and schedules syncs the same way.
type Core struct {
	cfg      CoreConfig
	backend  Backend
	trackers []*Tracker
	runner   *runner.Runner
	clock    clock.Clock

	servicesSynced, slicesSynced atomic.Bool
	initialized                  atomic.Bool

	mu       sync.Mutex // guards the fields below
	node     endpoints.Node
	needFull bool
	lastFull time.Time
	syncCtx  context.Context
}

// NewCore returns a Core driving backend.
func NewCore(cfg CoreConfig, backend Backend) (*Core, error) {
	if len(cfg.Families) == 0 {
		return nil, fmt.Errorf("creating proxy core: no IP family configured")
	}
	c := &Core{cfg: cfg, backend: backend, clock: cfg.Clock, needFull: true, syncCtx: context.Background()}
	if c.clock == nil {
		c.clock = clock.RealClock{}
	}
	c.node = endpoints.Node{Name: cfg.NodeName}
	for _, f := range cfg.Families {
		c.trackers = append(c.trackers, NewTracker(f, cfg.NodeName))
	}
	r, err := runner.New("sync-proxy-rules", c.syncOnce, cfg.MinSyncPeriod, cfg.SyncPeriod, FullSyncPeriod, c.clock)
	if err != nil {
		return nil, fmt.Errorf("creating sync runner: %w", err)
	}
	c.runner = r
	return c, nil
}

// Trackers returns the per-family trackers, in CoreConfig.Families order.
func (c *Core) Trackers() []*Tracker { return c.trackers }

// SyncLoop runs syncs until ctx is done.
func (c *Core) SyncLoop(ctx context.Context) {
	c.mu.Lock()
	c.syncCtx = ctx
	c.mu.Unlock()
	for _, t := range c.trackers {
		if c.cfg.Health != nil {
			c.cfg.Health.Updated(t.Family())
		}
	}
	c.runner.Loop(ctx)
}

// SyncNow runs one sync synchronously, for tests and benchmarks that need to know when the
// rules are in place. It must not be called while SyncLoop runs. It returns the backend's error.
func (c *Core) SyncNow(ctx context.Context) error {
	c.mu.Lock()
	c.syncCtx = ctx
	c.mu.Unlock()
	return c.syncOnce()
}

// Sync asks for a sync soon (coalesced with other requests).
func (c *Core) Sync() { c.runner.Run() }

// ForceFullSync asks for a full sync soon, for example after a backend noticed drift.
func (c *Core) ForceFullSync() {
	c.mu.Lock()
	c.needFull = true
	c.mu.Unlock()
	c.runner.Run()
}

// OnServiceAdd implements ServiceHandler.
func (c *Core) OnServiceAdd(svc *v1.Service) { c.onService(nil, svc) }

// OnServiceUpdate implements ServiceHandler.
func (c *Core) OnServiceUpdate(old, svc *v1.Service) { c.onService(old, svc) }

// OnServiceDelete implements ServiceHandler.
func (c *Core) OnServiceDelete(svc *v1.Service) { c.onService(svc, nil) }

// OnServiceSynced implements ServiceHandler.
func (c *Core) OnServiceSynced() { c.servicesSynced.Store(true); c.maybeInitialize() }

// OnEndpointSliceAdd implements EndpointSliceHandler.
func (c *Core) OnEndpointSliceAdd(s *discovery.EndpointSlice) { c.onSlice(s, false) }

// OnEndpointSliceUpdate implements EndpointSliceHandler.
func (c *Core) OnEndpointSliceUpdate(_, s *discovery.EndpointSlice) { c.onSlice(s, false) }

// OnEndpointSliceDelete implements EndpointSliceHandler.
func (c *Core) OnEndpointSliceDelete(s *discovery.EndpointSlice) { c.onSlice(s, true) }

// OnEndpointSlicesSynced implements EndpointSliceHandler.
func (c *Core) OnEndpointSlicesSynced() { c.slicesSynced.Store(true); c.maybeInitialize() }

// OnNodeAdd implements NodeHandler.
func (c *Core) OnNodeAdd(node *v1.Node) { c.onNode(node) }

// OnNodeUpdate implements NodeHandler.
func (c *Core) OnNodeUpdate(_, node *v1.Node) { c.onNode(node) }

// OnNodeDelete implements NodeHandler: the node stays as endpoint choice knew it, but health
// reports it ineligible.
func (c *Core) OnNodeDelete(*v1.Node) {
	if c.cfg.Health != nil {
		c.cfg.Health.SyncNode(nil)
	}
}

// OnNodeSynced implements NodeHandler.
func (c *Core) OnNodeSynced() {}

func (c *Core) onService(old, svc *v1.Service) {
	for _, t := range c.trackers {
		c.queued(t, "service", t.UpdateService(old, svc))
	}
}

func (c *Core) onSlice(s *discovery.EndpointSlice, removed bool) {
	if s == nil {
		return
	}
	for _, t := range c.trackers {
		c.queued(t, "endpointslice", t.UpdateEndpointSlice(s, removed))
	}
}

// queued tells the observers about an event and, once initialized, asks for a sync if work is
// pending.
func (c *Core) queued(t *Tracker, kind string, pending bool) {
	if len(c.cfg.Observers) > 0 {
		svcs, eps := t.PendingCounts()
		for _, o := range c.cfg.Observers {
			o.Event(t.Family(), kind, svcs, eps)
		}
	}
	if !pending || !c.initialized.Load() {
		return
	}
	if c.cfg.Health != nil {
		c.cfg.Health.QueuedUpdate(t.Family())
	}
	c.runner.Run()
}

func (c *Core) onNode(node *v1.Node) {
	if c.cfg.Health != nil {
		c.cfg.Health.SyncNode(node)
	}
	zone := node.Labels[endpoints.ZoneLabel]
	c.mu.Lock()
	changed := c.node.Zone != zone
	c.node.Zone = zone
	if changed {
		c.needFull = true
	}
	c.mu.Unlock()
	if changed && c.initialized.Load() {
		klog.InfoS("Node topology changed, scheduling a full sync", "node", node.Name, "zone", zone)
		c.runner.Run()
	}
}

// maybeInitialize starts syncing once Services and EndpointSlices have both been listed.
func (c *Core) maybeInitialize() {
	if c.servicesSynced.Load() && c.slicesSynced.Load() && c.initialized.CompareAndSwap(false, true) {
		c.runner.Run()
	}
}

// Initialized reports whether the initial Services and EndpointSlices have been delivered.
func (c *Core) Initialized() bool { return c.initialized.Load() }

// syncOnce is the runner's function: one checkout, one backend sync, then the observers.
func (c *Core) syncOnce() error {
	if !c.initialized.Load() {
		return nil
	}
	start := c.clock.Now()
	c.mu.Lock()
	full := c.needFull || start.Sub(c.lastFull) >= FullSyncPeriod
	c.needFull = false // consumed here, so a ForceFullSync during this sync is kept for the next
	req := &SyncRequest{Full: full, Node: c.node, Trackers: c.trackers}
	ctx := c.syncCtx
	c.mu.Unlock()
	for _, t := range c.trackers {
		req.Checkouts = append(req.Checkouts, t.Checkout())
	}
	err := c.backend.Sync(ctx, req)
	took := c.clock.Since(start)
	c.mu.Lock()
	if err != nil {
		c.needFull = true
	}
	if err == nil && full {
		c.lastFull = start
	}
	c.mu.Unlock()
	if err == nil && c.cfg.Health != nil {
		for _, t := range c.trackers {
			c.cfg.Health.Updated(t.Family())
		}
	}
	for _, o := range c.cfg.Observers {
		o.Synced(req, took, err)
	}
	if err != nil {
		return fmt.Errorf("syncing proxy rules (full=%t): %w", full, err)
	}
	return nil
}
