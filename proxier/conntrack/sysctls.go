package conntrack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/cpuset"
)

// conntrackMaxCap caps the scaled nf_conntrack_max (maxPerCore * CPUs) so
// that machines with many cores do not reserve excessive kernel memory.
const conntrackMaxCap = 1048576

// Paths relative to the root given to ApplySysctls.
const (
	netfilterSysctlDir = "proc/sys/net/netfilter"
	hashsizePath       = "sys/module/nf_conntrack/parameters/hashsize"
)

// SysctlConfig is the conntrack part of the kube-proxy configuration.
type SysctlConfig struct {
	// MaxPerCore is the number of tracked flows per CPU; 0 leaves
	// nf_conntrack_max (and the hash size) as they are and ignores Min.
	MaxPerCore int32
	// Min is the lower bound of nf_conntrack_max when MaxPerCore is set.
	Min int32
	// TCPEstablishedTimeout sets nf_conntrack_tcp_timeout_established when > 0.
	TCPEstablishedTimeout time.Duration
	// TCPCloseWaitTimeout sets nf_conntrack_tcp_timeout_close_wait when > 0.
	TCPCloseWaitTimeout time.Duration
	// UDPTimeout sets nf_conntrack_udp_timeout when > 0.
	UDPTimeout time.Duration
	// UDPStreamTimeout sets nf_conntrack_udp_timeout_stream when > 0.
	UDPStreamTimeout time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal to 1 when true.
	TCPBeLiberal bool
}

// HostNumCPU returns the number of online CPUs of the host, which sizes the
// host-wide nf_conntrack_max; unlike runtime.NumCPU it ignores the process's
// CPU affinity. It falls back to runtime.NumCPU when sysfs cannot be read.
func HostNumCPU() int {
	if n, err := cpuset.NumCPU(); err == nil && n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// ApplySysctls applies cfg under root ("/" on a real node): it raises
// proc/sys/net/netfilter/nf_conntrack_max to the value computed from
// MaxPerCore, Min and numCPU (never lowering it), raises
// sys/module/nf_conntrack/parameters/hashsize to a quarter of that, and sets
// the configured timeouts and tcp_be_liberal. Values already in place are not
// rewritten. The first failure is returned.
func ApplySysctls(root string, cfg SysctlConfig, numCPU int) error {
	maxFlows, err := desiredConntrackMax(cfg, numCPU)
	if err != nil {
		return err
	}
	if maxFlows > 0 {
		if err := raiseConntrackMax(root, maxFlows); err != nil {
			return err
		}
	}
	for _, setting := range optionalSysctls(cfg) {
		if !setting.wanted {
			continue
		}
		if err := setNetfilterSysctl(root, setting.name, setting.value); err != nil {
			return err
		}
	}
	return nil
}

// optionalSysctl is a net/netfilter sysctl that is set only when configured.
type optionalSysctl struct {
	name   string
	value  int
	wanted bool
}

// optionalSysctls lists the timeouts and tcp_be_liberal in the order
// upstream kube-proxy applies them.
func optionalSysctls(cfg SysctlConfig) []optionalSysctl {
	return []optionalSysctl{
		{"nf_conntrack_tcp_timeout_established", timeoutSeconds(cfg.TCPEstablishedTimeout), cfg.TCPEstablishedTimeout > 0},
		{"nf_conntrack_tcp_timeout_close_wait", timeoutSeconds(cfg.TCPCloseWaitTimeout), cfg.TCPCloseWaitTimeout > 0},
		{"nf_conntrack_tcp_be_liberal", 1, cfg.TCPBeLiberal},
		{"nf_conntrack_udp_timeout", timeoutSeconds(cfg.UDPTimeout), cfg.UDPTimeout > 0},
		{"nf_conntrack_udp_timeout_stream", timeoutSeconds(cfg.UDPStreamTimeout), cfg.UDPStreamTimeout > 0},
	}
}

// desiredConntrackMax returns the nf_conntrack_max to ensure, 0 for "leave
// as is": max(MaxPerCore*numCPU, Min), where a scaled value above the cap is
// replaced by the cap.
func desiredConntrackMax(cfg SysctlConfig, numCPU int) (int, error) {
	if cfg.MaxPerCore <= 0 {
		return 0, nil
	}
	if numCPU <= 0 {
		return 0, fmt.Errorf("computing nf_conntrack_max: invalid CPU count %d", numCPU)
	}
	scaled := int(cfg.MaxPerCore) * numCPU
	if scaled > conntrackMaxCap {
		klog.V(3).InfoS("Capping scaled conntrack max", "scaled", scaled, "cap", conntrackMaxCap)
		return conntrackMaxCap, nil
	}
	return max(scaled, int(cfg.Min)), nil
}

// raiseConntrackMax raises nf_conntrack_max to at least maxFlows (also when
// the current value cannot be read) and the hash table size to maxFlows/4.
func raiseConntrackMax(root string, maxFlows int) error {
	maxPath := filepath.Join(root, netfilterSysctlDir, "nf_conntrack_max")
	current, err := readIntFile(maxPath)
	if err != nil || current < maxFlows {
		klog.InfoS("Setting nf_conntrack_max", "value", maxFlows)
		if err := writeIntFile(maxPath, maxFlows); err != nil {
			return err
		}
	}
	hashPath := filepath.Join(root, hashsizePath)
	hashsize, err := readIntFile(hashPath)
	if err != nil {
		return err
	}
	if hashsize < maxFlows/4 {
		klog.InfoS("Setting conntrack hashsize", "value", maxFlows/4)
		return writeIntFile(hashPath, maxFlows/4)
	}
	return nil
}

// setNetfilterSysctl sets net/netfilter/<name> to value unless it already
// has that value.
func setNetfilterSysctl(root, name string, value int) error {
	path := filepath.Join(root, netfilterSysctlDir, name)
	if current, err := readIntFile(path); err == nil && current == value {
		return nil
	}
	klog.InfoS("Setting sysctl", "entry", "net/netfilter/"+name, "value", value)
	return writeIntFile(path, value)
}

// timeoutSeconds converts a positive timeout to whole seconds, rounding up
// so that a sub-second timeout never becomes 0.
func timeoutSeconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}

// readIntFile reads a file holding one decimal integer.
func readIntFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	value, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	return value, nil
}

// writeIntFile writes a decimal integer to an existing file (sysctl and
// module parameter files are never created).
func writeIntFile(path string, value int) error {
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("opening %s for writing: %w", path, err)
	}
	_, writeErr := file.WriteString(strconv.Itoa(value))
	closeErr := file.Close()
	if err := errors.Join(writeErr, closeErr); err != nil {
		return fmt.Errorf("writing %d to %s: %w", value, path, err)
	}
	return nil
}
