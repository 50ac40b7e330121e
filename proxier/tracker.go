package proxier

import (
	"reflect"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodeproxy/nodeproxy/endpoints"
)

// TriggerTimeAnnotation is the EndpointSlice annotation recording when the change that produced
// the slice happened; network programming latency is measured from it.
const TriggerTimeAnnotation = v1.EndpointsLastChangeTriggerTime

// Tracker is the one change tracker of a proxy, for one IP family. Informer handlers feed it
// Service and EndpointSlice events from any goroutine; the sync loop calls Checkout, which
// returns exactly the service ports whose rules must change since the previous Checkout, and
// moves them into the applied state that ForEach walks for full syncs.
//
// Cost: an event is O(ports of that Service) or O(endpoints of that slice); a Checkout is
// O(ports and endpoints of the Services that changed), never O(all Services). Events that change
// nothing a rule depends on (informer resyncs, metadata-only updates, a change and its undo) are
// dropped: they produce no ServicePortChange.
type Tracker struct {
	family v1.IPFamily
	slices *endpoints.SliceCache
	start  time.Time

	mu sync.Mutex
	// pendingServices holds the ports of each Service changed since the last Checkout, sorted
	// by name (nil: deleted or without ports). The Service objects themselves are not kept:
	// before the first Checkout that would be every Service of the cluster, decoded.
	pendingServices map[types.NamespacedName][]*ServicePort
	// pendingEndpoints holds the Services whose slices changed since the last Checkout.
	pendingEndpoints map[types.NamespacedName]struct{}
	// triggerTimes holds, per Service, the oldest slice trigger time since the last Checkout.
	triggerTimes map[types.NamespacedName]time.Time

	// applied is the state as of the last Checkout.
	applied map[types.NamespacedName]*appliedService
	// servicePortCount is the number of ports in applied.
	servicePortCount int
}

// appliedService is one Service's state as of the last Checkout: its ports and its endpoint
// lists, each sorted by name. Lists, not maps: a Service has one or a few ports, and two small
// maps per Service cost more than its endpoints at 10,000 Services.
type appliedService struct {
	ports     []*ServicePort
	endpoints []endpoints.PortEndpoints
}

// port returns the applied port named name (nil if none).
func (a *appliedService) port(name endpoints.ServicePortName) *ServicePort {
	for _, p := range a.ports {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// endpointsOf returns the applied endpoints of the port named name.
func (a *appliedService) endpointsOf(name endpoints.ServicePortName) []endpoints.Endpoint {
	for _, l := range a.endpoints {
		if l.Name == name {
			return l.Endpoints
		}
	}
	return nil
}

// ServicePortChange is one service port whose rules must change.
type ServicePortChange struct {
	// Name identifies the port.
	Name endpoints.ServicePortName
	// Previous is the port as of the last Checkout (nil: the port is new).
	Previous *ServicePort
	// Current is the port now (nil: the port was removed).
	Current *ServicePort
	// PreviousEndpoints are the port's endpoints as of the last Checkout.
	PreviousEndpoints []endpoints.Endpoint
	// Endpoints are the port's endpoints now, sorted by String().
	Endpoints []endpoints.Endpoint
}

// Checkout is what changed in one IP family since the previous Checkout.
type Checkout struct {
	// Family is the IP family of every address in the checkout.
	Family v1.IPFamily
	// Changes are the service ports whose rules must change, sorted by name.
	Changes []ServicePortChange
	// ServiceChanges and EndpointChanges count the Services with pending service or slice events
	// (for the *_changes_pending metrics).
	ServiceChanges, EndpointChanges int
	// OldestTrigger is the oldest endpoint-change trigger time among the changes (zero if none).
	OldestTrigger time.Time
}

// NewTracker returns an empty tracker for one IP family on the named node.
func NewTracker(family v1.IPFamily, nodeName string) *Tracker {
	return &Tracker{
		family:           family,
		slices:           endpoints.NewSliceCache(family, nodeName),
		start:            time.Now(),
		pendingServices:  map[types.NamespacedName][]*ServicePort{},
		pendingEndpoints: map[types.NamespacedName]struct{}{},
		triggerTimes:     map[types.NamespacedName]time.Time{},
		applied:          map[types.NamespacedName]*appliedService{},
	}
}

// Family returns the tracker's IP family.
func (t *Tracker) Family() v1.IPFamily { return t.family }

// UpdateService records a Service event (previous nil: add; current nil: delete). It returns
// whether anything is pending for the next Checkout.
func (t *Tracker) UpdateService(previous, current *v1.Service) bool {
	svc := current
	if svc == nil {
		svc = previous
	}
	if svc == nil {
		return t.Pending()
	}
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	ports := servicePortList(current, t.family)
	t.mu.Lock()
	defer t.mu.Unlock()
	var appliedPorts []*ServicePort
	if a := t.applied[nn]; a != nil {
		appliedPorts = a.ports
	}
	if samePorts(appliedPorts, ports) {
		delete(t.pendingServices, nn) // net no-op since the last Checkout
	} else {
		t.pendingServices[nn] = ports
	}
	return len(t.pendingServices) > 0 || len(t.pendingEndpoints) > 0
}

// UpdateEndpointSlice records an EndpointSlice event (removed: deletion). It returns whether
// anything is pending for the next Checkout.
func (t *Tracker) UpdateEndpointSlice(slice *discovery.EndpointSlice, removed bool) bool {
	nn, changed := t.slices.Update(slice, removed)
	t.mu.Lock()
	defer t.mu.Unlock()
	if changed {
		t.pendingEndpoints[nn] = struct{}{}
		if !removed {
			t.noteTriggerTime(nn, slice)
		}
	}
	return len(t.pendingServices) > 0 || len(t.pendingEndpoints) > 0
}

// noteTriggerTime keeps the oldest trigger time of nn that is after the tracker started.
func (t *Tracker) noteTriggerTime(nn types.NamespacedName, slice *discovery.EndpointSlice) {
	ts, err := time.Parse(time.RFC3339Nano, slice.Annotations[TriggerTimeAnnotation])
	if err != nil || ts.Before(t.start) {
		return
	}
	if old, ok := t.triggerTimes[nn]; !ok || ts.Before(old) {
		t.triggerTimes[nn] = ts
	}
}

// Pending reports whether a Checkout would have Services to look at.
func (t *Tracker) Pending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pendingServices) > 0 || len(t.pendingEndpoints) > 0
}

// PendingCounts returns how many Services have pending service and slice changes.
func (t *Tracker) PendingCounts() (services, endpointSlices int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pendingServices), len(t.pendingEndpoints)
}

// checkoutChunkMin is the fewest Services a Checkout gives each goroutine: below it one
// goroutine does them all (a change is a few microseconds of work).
const checkoutChunkMin = 512

// Checkout moves every pending change into the applied state and returns the service ports
// whose rules must change. Call it from the sync loop only. The Services are looked at in
// parallel (ChunkCount); the applied state is then written by this goroutine alone.
func (t *Tracker) Checkout() *Checkout {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := &Checkout{Family: t.family, ServiceChanges: len(t.pendingServices), EndpointChanges: len(t.pendingEndpoints)}
	names := make([]types.NamespacedName, 0, len(t.pendingServices)+len(t.pendingEndpoints))
	for nn := range t.pendingServices {
		names = append(names, nn)
	}
	for nn := range t.pendingEndpoints {
		if _, dup := t.pendingServices[nn]; !dup {
			names = append(names, nn)
		}
	}
	nexts := make([]*appliedService, len(names))
	chunks := ChunkCount(len(names), checkoutChunkMin)
	changes := make([][]ServicePortChange, chunks)
	RunChunks(len(names), chunks, func(c, lo, hi int) {
		for i := lo; i < hi; i++ {
			nexts[i], changes[c] = t.nextService(names[i], changes[c])
		}
	})
	for i, nn := range names {
		t.commitService(nn, nexts[i])
	}
	out.Changes = slices.Concat(changes...)
	for _, ts := range t.triggerTimes {
		if out.OldestTrigger.IsZero() || ts.Before(out.OldestTrigger) {
			out.OldestTrigger = ts
		}
	}
	clear(t.pendingServices)
	clear(t.pendingEndpoints)
	clear(t.triggerTimes)
	slices.SortFunc(out.Changes, func(a, b ServicePortChange) int { return endpoints.CompareNames(a.Name, b.Name) })
	return out
}

// nextService returns one Service's state with its pending changes applied, and appends its
// changed ports to changes. It only reads the tracker (Checkout runs it concurrently).
func (t *Tracker) nextService(nn types.NamespacedName, changes []ServicePortChange) (*appliedService, []ServicePortChange) {
	old := t.applied[nn]
	if old == nil {
		old = &appliedService{}
	}
	next := &appliedService{ports: old.ports, endpoints: old.endpoints}
	if ports, ok := t.pendingServices[nn]; ok {
		next.ports = ports
	}
	if _, ok := t.pendingEndpoints[nn]; ok {
		next.endpoints = t.slices.PortEndpointsFor(nn)
	}
	for _, cur := range next.ports {
		prev := old.port(cur.Name)
		eps := next.endpointsOf(cur.Name)
		prevEps := old.endpointsOf(cur.Name)
		if prev == nil || !reflect.DeepEqual(prev, cur) || !slices.EqualFunc(prevEps, eps, sameEndpoint) {
			changes = append(changes, ServicePortChange{Name: cur.Name, Previous: prev, Current: cur, PreviousEndpoints: prevEps, Endpoints: eps})
		}
	}
	for _, prev := range old.ports {
		if next.port(prev.Name) == nil {
			changes = append(changes, ServicePortChange{Name: prev.Name, Previous: prev, PreviousEndpoints: old.endpointsOf(prev.Name)})
		}
	}
	return next, changes
}

// commitService makes next the applied state of nn (a Service without ports and endpoints is
// forgotten).
func (t *Tracker) commitService(nn types.NamespacedName, next *appliedService) {
	if old := t.applied[nn]; old != nil {
		t.servicePortCount -= len(old.ports)
	}
	t.servicePortCount += len(next.ports)
	if len(next.ports) == 0 && len(next.endpoints) == 0 {
		delete(t.applied, nn)
	} else {
		t.applied[nn] = next
	}
}

// ForEach calls fn for every applied service port with its endpoints, in no particular order.
// Call it from the sync loop only (it reads the state Checkout writes).
func (t *Tracker) ForEach(fn func(port *ServicePort, eps []endpoints.Endpoint)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, a := range t.applied {
		for _, p := range a.ports {
			fn(p, a.endpointsOf(p.Name))
		}
	}
}

// ServicePortCount returns the number of applied service ports.
func (t *Tracker) ServicePortCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.servicePortCount
}

// samePorts reports whether two port lists (sorted by name) would program the same rules.
func samePorts(a, b []*ServicePort) bool {
	return slices.EqualFunc(a, b, func(p, q *ServicePort) bool { return reflect.DeepEqual(p, q) })
}

// sameEndpoint compares two endpoints field by field.
func sameEndpoint(a, b endpoints.Endpoint) bool { return reflect.DeepEqual(a, b) }
