package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// podSandboxEnv is the variable the pod agent sets on a pod's processes to the name of its
// sandbox (podagent/pods.SandboxEnv).
const podSandboxEnv = "PODAGENT_SANDBOX"

// sandboxNetnsPath returns /proc/<pid>/ns/net of a process running in the named pod sandbox.
// The pod agent mounts its sandboxes' named namespaces inside `ip netns exec`'s private
// mount namespace, so /run/netns/<sandbox> is an empty file to the test binary and cannot be
// entered by name; a process inside the sandbox gives the same namespace.
func sandboxNetnsPath(sandbox string) (string, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return "", fmt.Errorf("listing /proc: %w", err)
	}
	marker := []byte(podSandboxEnv + "=" + sandbox + "\x00")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		environ, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err == nil && bytes.Contains(environ, marker) {
			return filepath.Join("/proc", e.Name(), "ns", "net"), nil
		}
	}
	return "", fmt.Errorf("no process of pod sandbox %s found", sandbox)
}

// dialFrom dials addr from a topology member or from a namespace path (/proc/<pid>/ns/net).
func dialFrom(ctx context.Context, c *cluster.Cluster, from, network, addr string) (net.Conn, error) {
	if !strings.HasPrefix(from, "/proc/") {
		return c.DialContext(ctx, from, network, addr)
	}
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		conn, err := dialInNetns(ctx, from, network, addr)
		done <- result{conn, err}
	}()
	r := <-done
	return r.conn, r.err
}

// dialInNetns switches the calling (locked) thread into the namespace at path, dials and
// switches back. It unlocks the thread only when switching back worked, so a thread left in
// the wrong namespace ends with its goroutine.
func dialInNetns(ctx context.Context, path, network, addr string) (net.Conn, error) {
	original, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("getting the current network namespace: %w", err)
	}
	defer original.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, fmt.Errorf("entering network namespace %s: %w", path, err)
	}
	var d net.Dialer
	conn, dialErr := d.DialContext(ctx, network, addr)
	if err := netns.Set(original); err == nil {
		runtime.UnlockOSThread()
	}
	if dialErr != nil {
		return nil, fmt.Errorf("dialing %s %s from %s: %w", network, addr, path, dialErr)
	}
	return conn, nil
}
