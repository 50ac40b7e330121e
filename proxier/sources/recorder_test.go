package sources

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// waitTimeout bounds every wait for asynchronous events in these tests.
const waitTimeout = 10 * time.Second

// recordedEvent is one call a source made on the recorder.
type recordedEvent struct {
	op   string // add, update, delete, synced
	kind string // Service, EndpointSlice, Node
	key  string // namespace/name (name for Nodes); empty for synced
	old  metav1.Object
	obj  metav1.Object
}

func (e recordedEvent) String() string {
	return strings.TrimSpace(fmt.Sprintf("%s %s %s", e.op, e.kind, e.key))
}

// recorder is a proxier.Provider that records every call; safe for concurrent use.
type recorder struct {
	mu      sync.Mutex
	events  []recordedEvent
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) record(op, kind string, old, obj metav1.Object) {
	e := recordedEvent{op: op, kind: kind, old: old, obj: obj}
	if obj != nil {
		e.key = obj.GetName()
		if obj.GetNamespace() != "" {
			e.key = obj.GetNamespace() + "/" + obj.GetName()
		}
	}
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// snapshot returns the recorded events.
func (r *recorder) snapshot() []recordedEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// take returns the recorded events and forgets them.
func (r *recorder) take() []recordedEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	events := r.events
	r.events = nil
	return events
}

// waitFor waits until cond holds for the recorded events, failing the test after waitTimeout.
func (r *recorder) waitFor(t *testing.T, what string, cond func([]recordedEvent) bool) []recordedEvent {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		events := r.snapshot()
		if cond(events) {
			return events
		}
		select {
		case <-r.changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; recorded: %v", what, names(events))
		}
	}
}

// waitForEvent waits until an event with the given String() form has been recorded.
func (r *recorder) waitForEvent(t *testing.T, want string) []recordedEvent {
	t.Helper()
	return r.waitFor(t, want, func(events []recordedEvent) bool { return slices.Contains(names(events), want) })
}

// names returns the String() forms of events.
func names(events []recordedEvent) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.String()
	}
	return out
}

// sortedNames returns the String() forms of events, sorted.
func sortedNames(events []recordedEvent) []string {
	out := names(events)
	slices.Sort(out)
	return out
}

func (r *recorder) OnServiceAdd(s *v1.Service)       { r.record("add", "Service", nil, s) }
func (r *recorder) OnServiceUpdate(o, s *v1.Service) { r.record("update", "Service", o, s) }
func (r *recorder) OnServiceDelete(s *v1.Service)    { r.record("delete", "Service", nil, s) }
func (r *recorder) OnServiceSynced()                 { r.record("synced", "Service", nil, nil) }
func (r *recorder) OnEndpointSliceAdd(s *discovery.EndpointSlice) {
	r.record("add", "EndpointSlice", nil, s)
}
func (r *recorder) OnEndpointSliceUpdate(o, s *discovery.EndpointSlice) {
	r.record("update", "EndpointSlice", o, s)
}
func (r *recorder) OnEndpointSliceDelete(s *discovery.EndpointSlice) {
	r.record("delete", "EndpointSlice", nil, s)
}
func (r *recorder) OnEndpointSlicesSynced()    { r.record("synced", "EndpointSlice", nil, nil) }
func (r *recorder) OnNodeAdd(n *v1.Node)       { r.record("add", "Node", nil, n) }
func (r *recorder) OnNodeUpdate(o, n *v1.Node) { r.record("update", "Node", o, n) }
func (r *recorder) OnNodeDelete(n *v1.Node)    { r.record("delete", "Node", nil, n) }
func (r *recorder) OnNodeSynced()              { r.record("synced", "Node", nil, nil) }

// allSynced reports whether all three synced calls were recorded.
func allSynced(events []recordedEvent) bool {
	got := names(events)
	return slices.Contains(got, "synced Service") && slices.Contains(got, "synced EndpointSlice") && slices.Contains(got, "synced Node")
}
