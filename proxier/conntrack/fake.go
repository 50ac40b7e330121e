package conntrack

import (
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"
)

// FakeCall is one recorded call of [Fake.CleanStale].
type FakeCall struct {
	// Family is the IP family the call asked to clean.
	Family v1.IPFamily
	// Targets is a deep copy of the targets passed in.
	Targets []Target
}

// Fake is an [Interface] for unit tests: it records every call and returns a
// configurable result. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	calls   []FakeCall
	deleted int
	err     error
}

var _ Interface = (*Fake)(nil)

// NewFake returns a Fake whose calls delete nothing and succeed.
func NewFake() *Fake {
	return &Fake{}
}

// CleanStale records the call and returns the configured result.
func (f *Fake) CleanStale(family v1.IPFamily, targets []Target) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, FakeCall{Family: family, Targets: cloneTargets(targets)})
	return f.deleted, f.err
}

// SetResult makes later calls return deleted and err.
func (f *Fake) SetResult(deleted int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted, f.err = deleted, err
}

// Calls returns the calls recorded so far, oldest first.
func (f *Fake) Calls() []FakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Reset forgets the recorded calls.
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// cloneTargets deep-copies targets so later changes by the caller do not
// alter what was recorded.
func cloneTargets(targets []Target) []Target {
	if targets == nil {
		return nil
	}
	out := make([]Target, len(targets))
	for i, t := range targets {
		t.VIPs = slices.Clone(t.VIPs)
		t.Serving = slices.Clone(t.Serving)
		out[i] = t
	}
	return out
}
