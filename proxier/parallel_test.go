package proxier

import (
	"runtime"
	"sync"
	"testing"
)

// TestRunChunksCoversEveryItemOnce: ChunkCount gives one chunk per processor at most and at
// least minChunk items per chunk; RunChunks calls fn once per chunk, the chunks covering
// every item exactly once.
func TestRunChunksCoversEveryItemOnce(t *testing.T) {
	procs := runtime.GOMAXPROCS(4)
	t.Cleanup(func() { runtime.GOMAXPROCS(procs) })
	for _, tc := range []struct{ n, minChunk, wantChunks int }{
		{0, 10, 1}, {5, 10, 1}, {10, 10, 1}, {19, 10, 1}, {20, 10, 2}, {35, 10, 3}, {1000, 10, 4}, {1001, 0, 4},
	} {
		chunks := ChunkCount(tc.n, tc.minChunk)
		if chunks != tc.wantChunks {
			t.Errorf("ChunkCount(%d, %d) = %d, want %d", tc.n, tc.minChunk, chunks, tc.wantChunks)
		}
		seen := make([]int, tc.n)
		calls := make([]int, chunks)
		var mu sync.Mutex
		RunChunks(tc.n, chunks, func(chunk, lo, hi int) {
			mu.Lock()
			defer mu.Unlock()
			calls[chunk]++
			for i := lo; i < hi; i++ {
				seen[i]++
			}
		})
		for c, n := range calls {
			if n != 1 {
				t.Errorf("n=%d: chunk %d called %d times", tc.n, c, n)
			}
		}
		for i, s := range seen {
			if s != 1 {
				t.Errorf("n=%d minChunk=%d: item %d seen %d times", tc.n, tc.minChunk, i, s)
			}
		}
	}
}
