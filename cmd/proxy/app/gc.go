package app

import (
	"context"
	"runtime/debug"
	"sync"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// SyncGCPercent is the garbage collector's target (GOGC) from the backend's first sync on,
// when the environment sets no GOGC: the heap may then grow to 1.5 times the live data between
// collections instead of Go's default of twice. A node agent's memory is what operators
// budget for, and the peak comes with the first sync, when the whole dataplane state is built.
// Before it (the Service and EndpointSlice lists) the default stays: the runtime's smallest
// heap goal scales with GOGC (4 MB × GOGC/100), so a low target on the small heap of the
// lists made the collector run every few megabytes and slowed them. Figures in
// bench/results.md and the nftables issue's notes.
const SyncGCPercent = 50

// lowerGCAtFirstSync returns backend wrapped so that its first Sync sets the garbage
// collector's target to SyncGCPercent, unless GOGC is set in the environment (lookupEnv is
// os.LookupEnv; then backend is returned as it is).
func lowerGCAtFirstSync(backend proxier.Backend, lookupEnv func(string) (string, bool)) proxier.Backend {
	if _, set := lookupEnv("GOGC"); set {
		return backend
	}
	return &gcLowering{Backend: backend}
}

// gcLowering is a Backend whose first Sync lowers the garbage collector's target.
type gcLowering struct {
	proxier.Backend
	once sync.Once
}

// Sync implements proxier.Backend.
func (g *gcLowering) Sync(ctx context.Context, req *proxier.SyncRequest) error {
	g.once.Do(func() { debug.SetGCPercent(SyncGCPercent) })
	return g.Backend.Sync(ctx, req)
}
