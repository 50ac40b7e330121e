// Package pods runs the pods bound to one node: it watches them, gives each a network
// namespace on the node's bridge, runs their containers' commands as host processes,
// probes and restarts them, writes pod status and carries out deletion.
package pods

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strings"
	"sync"
	"syscall"

	"k8s.io/apimachinery/pkg/types"
)

// SandboxEnv holds the sandbox name in every process started, for Cleanup to find.
const SandboxEnv = "PODAGENT_SANDBOX"

// ProcessSpec is a process to start for a container or an exec probe: Argv[0] is an
// absolute path, Sandbox the named network namespace (empty: the node's), and LogPath
// (empty: none) receives stdout and stderr.
type ProcessSpec struct {
	Sandbox, Dir, LogPath string
	Argv, Env             []string
}

// Process is a started container process, leading its own process group.
type Process interface {
	// Signal sends sig to the process group.
	Signal(sig syscall.Signal) error
	// Wait waits for the exit, kills the group and returns the exit code (128+signal if killed).
	Wait() int
}

// Runtime creates pod sandboxes and runs processes in them.
type Runtime interface {
	// CreateSandbox creates the named network namespace on the bridge, with addrs.
	CreateSandbox(name string, addrs []netip.Prefix) error
	// RemoveSandbox deletes the namespace and its interface; a missing one is no error.
	RemoveSandbox(name string) error
	Start(spec ProcessSpec) (Process, error)
	// Exec runs a command until it exits or ctx ends, and returns its exit code and output.
	Exec(ctx context.Context, spec ProcessSpec) (int, string, error)
}

// SandboxName is pod uid's namespace name: prefix, "-" and the UID's first 8 hex digits (or hash).
func SandboxName(prefix string, uid types.UID) string {
	id := strings.ToLower(strings.ReplaceAll(string(uid), "-", ""))
	if len(id) < 8 || !isHex(id[:8]) {
		id = hash8(string(uid))
	}
	return prefix + "-" + id[:8]
}

// IsSandboxOf reports whether name is a sandbox name with exactly this prefix.
func IsSandboxOf(prefix, name string) bool {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	return ok && len(rest) == 8 && isHex(rest)
}

func isHex(s string) bool { return strings.Trim(s, "0123456789abcdef") == "" }

// hash8 is the FNV-1a hash of s in eight hex digits.
func hash8(s string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(s))
	return fmt.Sprintf("%08x", h.Sum32())
}

// allocator hands out pod addresses, one per pod CIDR, round robin, skipping the
// bridge's (the first) and IPv4 network and broadcast addresses.
type allocator struct {
	mu     sync.Mutex
	ranges []*addrRange
}

type addrRange struct {
	prefix netip.Prefix
	next   netip.Addr
	used   map[netip.Addr]bool
}

func newAllocator(cidrs []netip.Prefix) *allocator {
	a := &allocator{}
	for _, c := range cidrs {
		c = c.Masked()
		a.ranges = append(a.ranges, &addrRange{prefix: c, next: first(c), used: map[netip.Addr]bool{}})
	}
	return a
}

// Gateway is the bridge address of cidr: its first address, with the CIDR's length.
func Gateway(cidr netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(cidr.Masked().Addr().Next(), cidr.Bits())
}

func first(c netip.Prefix) netip.Addr { return c.Addr().Next().Next() }

func (r *addrRange) usable(a netip.Addr) bool {
	if !r.prefix.Contains(a) || a.Compare(first(r.prefix)) < 0 {
		return false
	}
	return !a.Is4() || r.prefix.Bits() >= 31 || r.prefix.Contains(a.Next())
}

// allocate returns one address per range, preferring free ones among preferred.
func (a *allocator) allocate(preferred []string) ([]netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []netip.Prefix
	for _, r := range a.ranges {
		addr, ok := r.pick(preferred)
		if !ok {
			return nil, fmt.Errorf("no free address in %s", r.prefix)
		}
		out = append(out, netip.PrefixFrom(addr, r.prefix.Bits()))
	}
	for i, p := range out {
		a.ranges[i].used[p.Addr()] = true
	}
	return out, nil
}

func (r *addrRange) pick(preferred []string) (netip.Addr, bool) {
	for _, s := range preferred {
		if p, err := netip.ParseAddr(s); err == nil && r.usable(p) && !r.used[p] {
			return p, true
		}
	}
	a := r.next
	for range 1 << 16 { // bounds the search in a large (IPv6) range
		if !r.usable(a) {
			if a = first(r.prefix); !r.usable(a) {
				return netip.Addr{}, false
			}
		}
		if !r.used[a] {
			r.next = a.Next()
			return a, true
		}
		a = a.Next()
	}
	return netip.Addr{}, false
}

// release frees addrs, as returned by allocate.
func (a *allocator) release(addrs []netip.Prefix) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, p := range addrs {
		delete(a.ranges[i].used, p.Addr())
	}
}
