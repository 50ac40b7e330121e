package proxier

import (
	"errors"
	"testing"
	"time"
)

func TestFirstSyncHookRunsOnceAfterTheFirstSuccessfulSync(t *testing.T) {
	runs := make(chan struct{}, 3)
	hook := NewFirstSyncHook(func() { runs <- struct{}{} })
	hook.Synced(&SyncRequest{}, 0, errors.New("failed"))
	select {
	case <-hook.Done():
		t.Fatalf("the hook ran after a failed sync")
	case <-time.After(20 * time.Millisecond):
	}
	hook.Synced(&SyncRequest{}, 0, nil)
	hook.Synced(&SyncRequest{}, 0, nil)
	select {
	case <-hook.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("the hook did not run after a successful sync")
	}
	if len(runs) != 1 {
		t.Errorf("the hook ran %d times, want once", len(runs))
	}
}
