package main

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestMain lets the test binary serve as a child that runs the parent's own executable.
func TestMain(m *testing.M) {
	if os.Getenv("PROCSTAT_CHILD_SLEEP") != "" {
		time.Sleep(5 * time.Second)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestTreeResidentSkipsChildrenRunningTheParentsExecutable(t *testing.T) {
	self := os.Getpid()
	alone := treeResidentKiB(self)
	twin := exec.Command(os.Args[0], "-test.run=^$")
	twin.Env = append(os.Environ(), "PROCSTAT_CHILD_SLEEP=1")
	other := exec.Command("sleep", "5")
	for _, c := range []*exec.Cmd{twin, other} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Process.Kill(); _ = c.Wait() }()
	}
	time.Sleep(200 * time.Millisecond) // both exec'd and resident
	tree := processTree(self)
	if len(tree) < 3 {
		t.Fatalf("process tree %v lacks the two children", tree)
	}
	got := treeResidentKiB(self)
	sleepRSS := residentKiB(other.Process.Pid)
	if sleepRSS == 0 || residentKiB(twin.Process.Pid) == 0 {
		t.Fatalf("children not resident yet")
	}
	// The total counts sleep but not the twin (whose RSS is about the parent's): it stays well
	// below the parent's RSS counted twice.
	if got < alone+sleepRSS/2 || got >= alone+sleepRSS+alone/2 {
		t.Errorf("tree RSS %d KiB; parent alone %d, sleep %d: the twin was counted or sleep was not", got, alone, sleepRSS)
	}
}
