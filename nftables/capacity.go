package nftables

import (
	"fmt"
	"slices"
)

// Set sizes. The kernel keeps a set declared without a size in a resizable hash table
// (rhashtable) that starts with a few buckets and doubles as it fills. A new table's ~120,000
// elements (10,000 Services × 10 endpoints) were then mostly inserted while a resize was in
// progress, through the slow path that saves and restores interrupts for every element: a
// quarter of a restart's sync (perf: rhashtable_insert_slow under nft_rhash_insert). A set
// declared with a size is a hash table with buckets for that many elements from the start, and
// insertion is a list push: the restart sync went from ~300 to ~225 ms in-process.
//
// The size is also a limit: the kernel refuses elements beyond it (ENFILE). So each set is
// created with room to grow (sizeFor), the family's state keeps an upper bound of each set's
// elements through every sync, and a sync that would take a set past its size builds the
// tables again with new sizes instead (in one batch, as after a restart), which happens each
// time a set has grown by half since its table was created.

// minSetSize is the smallest size a set is created with (~16 KiB of kernel buckets).
const minSetSize = 1024

// sizeFor returns the size of a set created to hold n elements: half as much again, and at
// least minSetSize.
func sizeFor(n int) int { return max(minSetSize, n+n/2) }

// sizedSet reports whether a set is created with a size from its elements: not the dynamic
// sets (bounded by affinitySetSize, their elements come from packets) nor the interval sets
// (not hash tables).
func sizedSet(s *setSpec) bool { return !s.dynamic && !s.interval }

// setCounts counts elements by set name.
type setCounts map[string]int

// sizedSpecs returns the family's set declarations, those sizedSet selects with the size for
// the elements counted in counts.
func sizedSpecs(fam *family, counts setCounts) []*setSpec {
	out := make([]*setSpec, len(fam.sets))
	for i, s := range fam.sets {
		out[i] = s
		if sizedSet(s) {
			sized := *s
			sized.size = sizeFor(counts[s.name])
			out[i] = &sized
		}
	}
	return out
}

// setLimits holds, for the sets of one family's table, their sizes and an upper bound of the
// elements each holds in the kernel.
type setLimits struct {
	sizes  map[string]int
	counts setCounts
}

// newSetLimits returns the limits of sets created as specs with counts elements.
func newSetLimits(specs []*setSpec, counts setCounts) setLimits {
	l := setLimits{sizes: map[string]int{}, counts: counts}
	for _, s := range specs {
		if s.size > 0 {
			l.sizes[s.name] = s.size
		}
	}
	return l
}

// overflow returns an error naming the first set (by name) that ops would take past its size.
func (l setLimits) overflow(ops *familyOps) error {
	var over []string
	for set, adds := range ops.adds {
		size, sized := l.sizes[set]
		if sized && l.counts[set]+len(adds)-len(ops.dels[set]) > size {
			over = append(over, set)
		}
	}
	if len(over) == 0 {
		return nil
	}
	slices.Sort(over)
	set := over[0]
	return fmt.Errorf("set %s would hold %d elements, over its size %d", set, l.counts[set]+len(ops.adds[set])-len(ops.dels[set]), l.sizes[set])
}

// record counts the element additions and deletions of ops as applied.
func (l setLimits) record(ops *familyOps) {
	for set, adds := range ops.adds {
		l.counts[set] += len(adds)
	}
	for set, dels := range ops.dels {
		l.counts[set] = max(0, l.counts[set]-len(dels))
	}
}
