package proxier

import (
	"runtime"
	"sync"
)

// A cold start's CPU work after the lists (the tracker's first Checkout, a backend building
// every port's rules) ran on one core while the others were idle. ChunkCount and RunChunks
// spread such loops over the processors.

// ChunkCount returns how many chunks of at least minChunk items n items make, at most one per
// processor (GOMAXPROCS), at least one.
func ChunkCount(n, minChunk int) int {
	return max(1, min(runtime.GOMAXPROCS(0), n/max(minChunk, 1)))
}

// RunChunks splits the items [0, n) into chunks contiguous parts of nearly equal size and
// calls fn once per part, each on its own goroutine (the first on the caller's), returning
// when every call has returned. fn must be safe to run concurrently with itself.
func RunChunks(n, chunks int, fn func(chunk, lo, hi int)) {
	chunks = max(chunks, 1)
	var wg sync.WaitGroup
	for c := 1; c < chunks; c++ {
		wg.Go(func() { fn(c, c*n/chunks, (c+1)*n/chunks) })
	}
	fn(0, 0, n/chunks)
	wg.Wait()
}
