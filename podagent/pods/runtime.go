// Package pods runs the pods bound to one node: it watches them, gives each a network
// namespace on the node's bridge, runs its containers' commands as host processes,
// probes them, restarts them by policy, writes pod status and carries out deletion.
package pods

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strings"
	"syscall"

	"k8s.io/apimachinery/pkg/types"
)

// SandboxEnv is set in every process the agent starts to the name of its pod's sandbox,
// so that leftovers can be found by Cleanup after a crash.
const SandboxEnv = "PODAGENT_SANDBOX"

// ProcessSpec is one process to start for a container or an exec probe.
type ProcessSpec struct {
	// Sandbox is the pod's named network namespace; empty runs in the node's namespace.
	Sandbox string
	// Argv is the command; Argv[0] is an absolute path.
	Argv []string
	Env  []string
	Dir  string
	// LogPath receives stdout and stderr (appended); empty discards them.
	LogPath string
}

// Process is a started container process, leading its own process group.
type Process interface {
	// Signal sends sig to the process group.
	Signal(sig syscall.Signal) error
	// Wait blocks until the process exits and returns its exit code (128+signal when
	// killed by a signal); it kills what is left of the group. Call it once.
	Wait() int
}

// Runtime creates pod sandboxes and runs processes in them.
type Runtime interface {
	// CreateSandbox creates the named network namespace with one interface on the node's
	// bridge holding addrs (one per family) and default routes via the bridge.
	CreateSandbox(name string, addrs []netip.Prefix) error
	// RemoveSandbox deletes the namespace and its interface; a missing one is no error.
	RemoveSandbox(name string) error
	// Start starts a container process.
	Start(spec ProcessSpec) (Process, error)
	// Exec runs a command to completion (killing it when ctx ends) and returns its exit
	// code and combined output.
	Exec(ctx context.Context, spec ProcessSpec) (int, string, error)
}

// SandboxName is the network namespace name of pod uid: prefix, a dash and eight hex
// digits (the UID's first eight when they are hex, else its hash).
func SandboxName(prefix string, uid types.UID) string {
	id := strings.ToLower(strings.ReplaceAll(string(uid), "-", ""))
	if len(id) < 8 || !isHex(id[:8]) {
		h := fnv.New32a()
		_, _ = h.Write([]byte(uid))
		id = fmt.Sprintf("%08x", h.Sum32())
	}
	return prefix + "-" + id[:8]
}

// IsSandboxOf reports whether name is a sandbox name with prefix (and not with a longer
// prefix that merely starts with this one).
func IsSandboxOf(prefix, name string) bool {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	return ok && len(rest) == 8 && isHex(rest)
}

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}
