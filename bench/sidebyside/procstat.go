package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// clockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat (100 on every Linux
// architecture Go supports).
const clockTicks = 100

// sampleInterval is how often the memory monitor reads the process tree.
const sampleInterval = 20 * time.Millisecond

// treeMonitor samples the resident memory of a process and all its descendants (the proxy
// plus its iptables-restore or nft children) and keeps the peak of their sum.
type treeMonitor struct {
	pid  int
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	peakKiB int64
}

// startTreeMonitor starts sampling pid's process tree every sampleInterval.
func startTreeMonitor(pid int) *treeMonitor {
	m := &treeMonitor{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		ticker := time.NewTicker(sampleInterval)
		defer ticker.Stop()
		for {
			m.sample()
			select {
			case <-m.stop:
				return
			case <-ticker.C:
			}
		}
	}()
	return m
}

// sample adds up the RSS of the tree once and updates the peak.
func (m *treeMonitor) sample() {
	total := treeResidentKiB(m.pid)
	m.mu.Lock()
	m.peakKiB = max(m.peakKiB, total)
	m.mu.Unlock()
}

// Stop ends the sampling and returns the peak in MiB.
func (m *treeMonitor) Stop() float64 {
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return float64(m.peakKiB) / 1024
}

// processTree returns pid and its live descendants, found through the children lists of
// every thread (/proc/<pid>/task/<tid>/children).
func processTree(pid int) []int {
	tree := []int{pid}
	for i := 0; i < len(tree) && i < 1000; i++ {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", tree[i]))
		if err != nil {
			continue
		}
		for _, task := range tasks {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", tree[i], task.Name()))
			if err != nil {
				continue
			}
			for _, field := range strings.Fields(string(data)) {
				if child, err := strconv.Atoi(field); err == nil {
					tree = append(tree, child)
				}
			}
		}
	}
	return tree
}

// treeResidentKiB is the RSS of pid plus that of its descendants, except descendants still
// running pid's own executable: a child between fork and exec (Go's os/exec clones with
// CLONE_VM) shares the parent's memory, and statm would show all of it a second time (a
// proxy of 150 MiB spawning iptables-save was once measured at 324 MiB that way).
func treeResidentKiB(pid int) int64 {
	tree := processTree(pid)
	own := executable(pid)
	total := residentKiB(pid)
	for _, child := range tree[1:] {
		if own != "" && executable(child) == own {
			continue
		}
		total += residentKiB(child)
	}
	return total
}

// executable is the path of the program pid runs ("" when it cannot be read).
func executable(pid int) string {
	path, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return ""
	}
	return path
}

// residentKiB is a process's resident set size (statm's second field), 0 when it is gone.
func residentKiB(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(fields[1], 10, 64)
	return pages * int64(os.Getpagesize()) / 1024
}

// statFields returns the fields of /proc/<pid>/stat after the command name: index 0 is
// field 3 (state), so field k of proc(5) is at index k-3.
func statFields(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, fmt.Errorf("reading the stat of process %d: %w", pid, err)
	}
	text := string(data)
	end := strings.LastIndexByte(text, ')')
	if end < 0 {
		return nil, fmt.Errorf("parsing the stat of process %d: no command name", pid)
	}
	fields := strings.Fields(text[end+1:])
	if len(fields) < 20 {
		return nil, fmt.Errorf("parsing the stat of process %d: %d fields", pid, len(fields))
	}
	return fields, nil
}

// treeCPUSeconds is the CPU time (user + system) used so far by pid, by its children it has
// waited for (cutime, cstime) and by its live descendants.
func treeCPUSeconds(pid int) (float64, error) {
	var ticks int64
	for i, p := range processTree(pid) {
		fields, err := statFields(p)
		if err != nil {
			if i == 0 {
				return 0, err
			}
			continue // a child that exited meanwhile: counted in cutime once waited for
		}
		last := 12 // utime (14), stime (15)
		if i == 0 {
			last = 14 // and cutime (16), cstime (17) of the proxy itself
		}
		for k := 11; k <= last; k++ {
			v, _ := strconv.ParseInt(fields[k], 10, 64)
			ticks += v
		}
	}
	return float64(ticks) / clockTicks, nil
}

// processStart returns when pid started, from its start time in /proc/<pid>/stat (clock
// ticks after boot, so 10 ms resolution) and the boot-time clock.
func processStart(pid int) (time.Time, error) {
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &now); err != nil {
		return time.Time{}, fmt.Errorf("reading the boot-time clock: %w", err)
	}
	wall := time.Now()
	fields, err := statFields(pid)
	if err != nil {
		return time.Time{}, err
	}
	startTicks, err := strconv.ParseInt(fields[19], 10, 64) // starttime (22)
	if err != nil {
		return time.Time{}, fmt.Errorf("parsing the start time of process %d: %w", pid, err)
	}
	sinceBoot := time.Duration(now.Sec)*time.Second + time.Duration(now.Nsec)
	started := time.Duration(startTicks) * time.Second / clockTicks
	return wall.Add(-(sinceBoot - started)), nil
}

// syncMetric is the sum and count of a proxy's kubeproxy_sync_proxy_rules_duration_seconds
// histogram (the IPv4 series when the metric has an ip_family label).
type syncMetric struct {
	sum   float64
	count float64
}

// scrapeSyncMetric reads the sync duration histogram from a proxy's metrics endpoint.
func scrapeSyncMetric(c *cluster.Cluster, node *cluster.Node) (syncMetric, error) {
	resp, err := c.HTTPClient(benchNode, 5*time.Second).Get(node.MetricsURL())
	if err != nil {
		return syncMetric{}, fmt.Errorf("scraping %s: %w", node.MetricsURL(), err)
	}
	defer resp.Body.Close()
	const name = "kubeproxy_sync_proxy_rules_duration_seconds"
	var m syncMetric
	found := false
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		line := scanner.Text()
		if strings.Contains(line, "ip_family=") && !strings.Contains(line, `ip_family="IPv4"`) {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		value, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			continue
		}
		switch metric, _, _ := strings.Cut(fields[0], "{"); metric {
		case name + "_sum":
			m.sum, found = m.sum+value, true
		case name + "_count":
			m.count += value
		}
	}
	if err := scanner.Err(); err != nil {
		return m, fmt.Errorf("reading %s: %w", node.MetricsURL(), err)
	}
	if !found {
		return m, fmt.Errorf("%s not exposed at %s", name, node.MetricsURL())
	}
	return m, nil
}

// runCommand runs argv (bounded to a minute) and returns its error with its output.
func runCommand(argv ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// commandOutput runs argv and returns its trimmed output, or "?" when it fails.
func commandOutput(dir string, argv ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// memTotalGiB reads MemTotal from /proc/meminfo.
func memTotalGiB() float64 {
	data, err := os.ReadFile(filepath.Join("/proc", "meminfo"))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kib, _ := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			return kib / (1 << 20)
		}
	}
	return 0
}
