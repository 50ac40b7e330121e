package iptables

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// newTestSession returns the IPv4 iptables-nft executor of a fresh namespace.
func newTestSession(t *testing.T) (*execExecutor, string) {
	t.Helper()
	needRoot(t)
	ns := newTestNetNS(t)
	e, err := newExecExecutor(v1.IPv4Protocol, VariantNFT, newNSRunner(ns))
	if err != nil {
		t.Skipf("no iptables-nft: %v", err)
	}
	t.Cleanup(e.close)
	return e, ns
}

func TestRestoreSessionAppliesEachInputBeforeReturning(t *testing.T) {
	e, ns := newTestSession(t)
	ctx := context.Background()
	var pid int
	for i := range 20 {
		chain := fmt.Sprintf("NP-SESSION-%d", i)
		if err := e.Restore(ctx, []byte("*nat\n:"+chain+" - [0:0]\n-A "+chain+" -j RETURN\nCOMMIT\n")); err != nil {
			t.Fatalf("restore %d: %v", i, err)
		}
		// Visible at once: Restore returned after the commit, not after the write.
		if got := savedRules(save(t, ns, VariantNFT, v1.IPv4Protocol, "nat"), chain); len(got) != 1 {
			t.Fatalf("after restore %d, %s holds %q, want its rule", i, chain, got)
		}
		if i == 0 {
			pid = e.session.proc.cmd.Process.Pid
		} else if got := e.session.proc.cmd.Process.Pid; got != pid {
			t.Fatalf("restore %d ran in process %d, the first in %d: want one process", i, got, pid)
		}
	}
}

func TestRestoreSessionReportsTheFailingLineAndRecovers(t *testing.T) {
	e, ns := newTestSession(t)
	ctx := context.Background()
	if err := e.Restore(ctx, []byte("*nat\n:NP-OK - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	bad := "*nat\n:NP-BAD - [0:0]\n-A NP-BAD -m nosuchmatch -j RETURN\nCOMMIT\n"
	err := e.Restore(ctx, []byte(bad))
	if err == nil || !strings.Contains(err.Error(), `line 3 of the input: "-A NP-BAD -m nosuchmatch -j RETURN"`) {
		t.Fatalf("restore of a bad input: error %v, want one quoting its line 3", err)
	}
	if strings.Contains(save(t, ns, VariantNFT, v1.IPv4Protocol, "nat"), "NP-BAD") {
		t.Errorf("the failed input was partly applied")
	}
	if err := e.Restore(ctx, []byte("*nat\n:NP-AFTER - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatalf("restore after a failure: %v", err)
	}
	if !strings.Contains(save(t, ns, VariantNFT, v1.IPv4Protocol, "nat"), ":NP-AFTER") {
		t.Errorf("the restore after a failure was not applied")
	}
}

func TestRestoreSessionEndsWithTheContext(t *testing.T) {
	e, _ := newTestSession(t)
	if err := e.Restore(context.Background(), []byte("*nat\n:NP-OK - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	p := e.session.proc
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// An input without COMMIT is never applied, so only the context can end the wait.
	if err := e.Restore(ctx, []byte("*nat\n:NP-NEVER - [0:0]\n")); err == nil {
		t.Fatalf("restore with a cancelled context succeeded")
	}
	if p.cmd.ProcessState == nil {
		t.Errorf("the session's process was not ended and reaped")
	}
	if e.session.proc != nil {
		t.Errorf("the session kept the ended process")
	}
}

func TestRestoreSessionReplacesAProcessThatDiedWhileIdle(t *testing.T) {
	e, ns := newTestSession(t)
	ctx := context.Background()
	if err := e.Restore(ctx, []byte("*nat\n:NP-FIRST - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	p := e.session.proc
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !p.exited(); {
		if time.Now().After(deadline) {
			t.Fatalf("the killed process's output never ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := e.Restore(ctx, []byte("*nat\n:NP-SECOND - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatalf("restore after the process died: %v", err)
	}
	if e.session.proc == p {
		t.Errorf("the dead process was kept")
	}
	if !strings.Contains(save(t, ns, VariantNFT, v1.IPv4Protocol, "nat"), ":NP-SECOND") {
		t.Errorf("the restore after the process died was not applied")
	}
}
