package app

import (
	"context"
	"runtime/debug"
	"testing"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// nopBackend is a Backend whose syncs do nothing.
type nopBackend struct{ syncs int }

func (b *nopBackend) Sync(context.Context, *proxier.SyncRequest) error { b.syncs++; return nil }

// TestTheFirstSyncLowersTheGCTarget: the target is lowered by the first sync, not before, and
// only when GOGC is unset.
func TestTheFirstSyncLowersTheGCTarget(t *testing.T) {
	orig := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(orig) })
	ctx := context.Background()

	inner := &nopBackend{}
	b := lowerGCAtFirstSync(inner, func(string) (string, bool) { return "", false })
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GC percent %d before the first sync, want 100", got)
	}
	if err := b.Sync(ctx, &proxier.SyncRequest{}); err != nil || inner.syncs != 1 {
		t.Fatalf("Sync = %v with %d inner syncs, want nil and 1", err, inner.syncs)
	}
	if got := debug.SetGCPercent(100); got != SyncGCPercent {
		t.Errorf("GC percent %d after the first sync, want %d", got, SyncGCPercent)
	}

	user := &nopBackend{}
	b = lowerGCAtFirstSync(user, func(string) (string, bool) { return "200", true })
	if b != proxier.Backend(user) {
		t.Error("the backend was wrapped although GOGC is set")
	}
}
