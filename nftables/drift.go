package nftables

import (
	"fmt"
	"slices"
	"sync"
)

// driftDetector decides, generation by generation, whether changes to our tables were ours.
// It is the monitor's logic without sockets: observe gets the notifications, begin and end
// bracket own commits, lost accounts for dropped notifications. Each returns the drift found
// (descriptions of foreign changes; empty if none).
type driftDetector struct {
	mu sync.Mutex
	// last is the latest generation accounted for.
	last uint32
	// touched describes the first change to our tables of the commit being received, and
	// touches counts them.
	touched string
	touches int
	// open is the own commit in flight: it follows generation openAfter.
	open      bool
	openAfter uint32
	// deferred are the generations after openAfter that touched our tables, seen before the
	// own commit's bracket closed.
	deferred []touchedGeneration
	// brackets are the closed brackets of own commits whose generations are not all seen yet.
	brackets []ownBracket
}

// touchedGeneration is a generation that changed our tables.
type touchedGeneration struct {
	gen  uint32
	what string
}

// ownBracket is one own commit: its generation is in (after, upTo], if committed.
type ownBracket struct {
	after, upTo uint32
	committed   bool
	// claimed is set once a generation of the range touched our tables: the commit's own.
	claimed bool
}

// newDriftDetector returns a detector that has accounted for generation gen.
func newDriftDetector(gen uint32) *driftDetector { return &driftDetector{last: gen} }

// genAfter reports whether generation a comes after b (ids are 32-bit and wrap).
func genAfter(a, b uint32) bool { return int32(a-b) > 0 }

// nextGen returns the generation after g: the kernel skips 0 when the id wraps.
func nextGen(g uint32) uint32 {
	if g == ^uint32(0) {
		return 1
	}
	return g + 1
}

// generation returns the latest generation accounted for.
func (d *driftDetector) generation() uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

// observe takes one notification.
func (d *driftDetector) observe(ev nftEvent) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !ev.commit {
		if d.touches == 0 {
			d.touched = ev.describe()
		}
		d.touches++
		return nil
	}
	what, touches := d.touched, d.touches
	d.touched, d.touches = "", 0
	if !genAfter(ev.gen, d.last) { // already accounted for as lost
		return nil
	}
	var found []string
	if ev.gen != nextGen(d.last) { // a gap: notifications lost without ENOBUFS
		found = d.loseUpTo(ev.gen - 1)
	}
	if touches > 0 {
		desc := fmt.Sprintf("%s and %d more changes (generation %d, by %s pid %d)", what, touches-1, ev.gen, ev.proc, ev.pid)
		found = append(found, d.classify(ev.gen, desc)...)
	}
	d.last = ev.gen
	d.prune()
	return found
}

// lost accounts for dropped notifications: every generation up to gen may have touched our
// tables.
func (d *driftDetector) lost(gen uint32) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.touched, d.touches = "", 0
	found := d.loseUpTo(gen)
	d.prune()
	return found
}

// loseUpTo classifies the generations after last up to gen as touching our tables.
func (d *driftDetector) loseUpTo(gen uint32) []string {
	if !genAfter(gen, d.last) {
		return nil
	}
	var found []string
	if gen-d.last > maxLostGenerations {
		found = []string{fmt.Sprintf("%d generations lost", gen-d.last)}
	} else {
		for g := nextGen(d.last); g != nextGen(gen); g = nextGen(g) {
			found = append(found, d.classify(g, fmt.Sprintf("notifications lost (generation %d)", g))...)
		}
	}
	d.last = gen
	return found
}

// classify decides whether generation gen, which touched our tables, was an own commit.
func (d *driftDetector) classify(gen uint32, what string) []string {
	for i := range d.brackets {
		b := &d.brackets[i]
		if genAfter(gen, b.after) && !genAfter(gen, b.upTo) {
			if b.committed && !b.claimed {
				b.claimed = true
				return nil
			}
			return []string{what}
		}
	}
	if d.open && genAfter(gen, d.openAfter) {
		d.deferred = append(d.deferred, touchedGeneration{gen: gen, what: what})
		return nil
	}
	return []string{what}
}

// begin opens the bracket of an own commit made after generation gen.
func (d *driftDetector) begin(gen uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.open, d.openAfter = true, gen
}

// end closes the open bracket: the own commit, if committed, is a generation up to gen.
func (d *driftDetector) end(gen uint32, committed bool) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.open {
		return nil
	}
	d.open = false
	d.brackets = append(d.brackets, ownBracket{after: d.openAfter, upTo: gen, committed: committed})
	var found []string
	for _, t := range d.deferred {
		found = append(found, d.classify(t.gen, t.what)...)
	}
	d.deferred = nil
	d.prune()
	return found
}

// prune forgets the brackets whose generations have all been accounted for.
func (d *driftDetector) prune() {
	d.brackets = slices.DeleteFunc(d.brackets, func(b ownBracket) bool { return !genAfter(b.upTo, d.last) })
}
