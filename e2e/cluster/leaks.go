package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"k8s.io/klog/v2"
)

// runIDPrefix starts every run ID: "npe2e-<pid of the test binary>-<random>". Only names with
// this prefix are ever reaped, so other users of network namespaces are left alone.
const runIDPrefix = "npe2e-"

// Leaks lists what the run runID left behind: named network namespaces whose name starts with
// the run ID, and live processes whose environment carries RunEnv=runID.
func Leaks(runID string) ([]string, error) {
	namespaces, err := namespacesWithPrefix(runID + "-")
	if err != nil {
		return nil, err
	}
	var leaks []string
	for _, ns := range namespaces {
		leaks = append(leaks, "network namespace "+ns)
	}
	pids, err := markedProcesses(func(value string) bool { return value == runID })
	if err != nil {
		return nil, err
	}
	for _, pid := range pids {
		leaks = append(leaks, fmt.Sprintf("process %d (%s)", pid, processCommand(pid)))
	}
	return leaks, nil
}

// markedProcesses returns the live processes whose RunEnv value satisfies match. Zombies have
// an empty environment and are not reported.
func markedProcesses(match func(value string) bool) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing /proc: %w", err)
	}
	marker := []byte(RunEnv + "=")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		environ, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue // exited meanwhile, or a kernel thread
		}
		for _, kv := range bytes.Split(environ, []byte{0}) {
			if value, ok := bytes.CutPrefix(kv, marker); ok && match(string(value)) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, nil
}

func processCommand(pid int) string {
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return "exited"
	}
	return strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
}

// killMarked sends SIGKILL to every process carrying RunEnv=runID.
func killMarked(runID string) error {
	pids, err := markedProcesses(func(value string) bool { return value == runID })
	if err != nil {
		return err
	}
	var errs []error
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("killing leftover process %d: %w", pid, err))
		}
	}
	return errors.Join(errs...)
}

// reapStaleRuns removes what earlier runs left behind when their test binary died without
// cleaning up (a test timeout panics past every cleanup): processes and namespaces of run IDs
// whose owning PID is gone.
func reapStaleRuns() {
	stale := map[string]bool{}
	names, err := namespacesWithPrefix(runIDPrefix)
	if err != nil {
		klog.ErrorS(err, "Listing namespaces of earlier e2e runs")
		return
	}
	for _, name := range names {
		if runID, ok := runIDOf(name); ok && !ownerAlive(runID) {
			stale[runID] = true
		}
	}
	pids, err := markedProcesses(func(value string) bool {
		return strings.HasPrefix(value, runIDPrefix) && !ownerAlive(value)
	})
	if err != nil {
		klog.ErrorS(err, "Listing processes of earlier e2e runs")
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for runID := range stale {
		klog.InfoS("Removing leftovers of an earlier e2e run", "runID", runID)
		if err := (topology{runID: runID}).destroy(); err != nil {
			klog.ErrorS(err, "Removing namespaces of an earlier e2e run", "runID", runID)
		}
	}
}

// runIDOf extracts "npe2e-<pid>-<random>" from a namespace name.
func runIDOf(name string) (string, bool) {
	parts := strings.SplitN(strings.TrimPrefix(name, runIDPrefix), "-", 3)
	if !strings.HasPrefix(name, runIDPrefix) || len(parts) < 2 {
		return "", false
	}
	return runIDPrefix + parts[0] + "-" + parts[1], true
}

// ownerAlive reports whether the test binary that created runID still runs. Unparsable IDs
// count as alive, so they are never reaped.
func ownerAlive(runID string) bool {
	pidText, _, _ := strings.Cut(strings.TrimPrefix(runID, runIDPrefix), "-")
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 {
		return true
	}
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// liveClusters are the clusters to tear down when the test binary receives SIGINT or SIGTERM.
var liveClusters = struct {
	sync.Mutex
	set       map[*Cluster]struct{}
	installed bool
}{set: map[*Cluster]struct{}{}}

// trackCluster registers c for teardown on SIGINT/SIGTERM, installing the handler once. The
// handler stops every live cluster and then re-raises the signal with its default action.
func trackCluster(c *Cluster) {
	liveClusters.Lock()
	defer liveClusters.Unlock()
	liveClusters.set[c] = struct{}{}
	if liveClusters.installed {
		return
	}
	liveClusters.installed = true
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-signals
		klog.InfoS("Signal received, tearing down e2e clusters", "signal", sig)
		liveClusters.Lock()
		clusters := make([]*Cluster, 0, len(liveClusters.set))
		for c := range liveClusters.set {
			clusters = append(clusters, c)
		}
		liveClusters.Unlock()
		for _, c := range clusters {
			if err := c.Stop(); err != nil {
				klog.ErrorS(err, "Tearing down an e2e cluster", "runID", c.RunID)
			}
		}
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
	}()
}

// untrackCluster forgets a stopped cluster.
func untrackCluster(c *Cluster) {
	liveClusters.Lock()
	defer liveClusters.Unlock()
	delete(liveClusters.set, c)
}
