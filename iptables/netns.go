package iptables

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// netnsDir is where named network namespaces are bind-mounted (as `ip netns` does).
const netnsDir = "/var/run/netns"

// nsRunner runs functions, and the commands they exec, in one network namespace.
type nsRunner struct {
	// path is the namespace file ("" = the current namespace).
	path string
}

// newNSRunner returns a runner for a named namespace (NAME under /var/run/netns), an absolute
// namespace path (such as /proc/PID/fd/N or /proc/PID/task/TID/ns/net), or "" for the current
// namespace.
func newNSRunner(netnsName string) nsRunner {
	switch {
	case netnsName == "":
		return nsRunner{}
	case strings.HasPrefix(netnsName, "/"):
		return nsRunner{path: netnsName}
	default:
		return nsRunner{path: filepath.Join(netnsDir, netnsName)}
	}
}

// String names the namespace for messages.
func (r nsRunner) String() string {
	if r.path == "" {
		return "current network namespace"
	}
	return "network namespace " + r.path
}

// do runs fn in the namespace. fn runs on a locked OS thread switched into the namespace;
// commands it starts with os/exec inherit that thread's namespace (Go forks from the calling
// thread). The thread switches back afterwards; if that fails it is never reused (the
// goroutine exits still locked, and the runtime discards the thread).
func (r nsRunner) do(fn func() error) error {
	if r.path == "" {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		target, err := netns.GetFromPath(r.path)
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("opening %s: %w", r, err)
			return
		}
		defer target.Close()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("getting the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("entering %s: %w", r, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			done <- errors.Join(fnErr, fmt.Errorf("leaving %s: %w", r, err))
			return // still locked: the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// readSysctl reads a /proc/sys key ("net/ipv4/conf/all/route_localnet") in the namespace.
func (r nsRunner) readSysctl(key string) (string, error) {
	var val string
	err := r.do(func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		if err != nil {
			return fmt.Errorf("reading sysctl %s: %w", key, err)
		}
		val = strings.TrimSpace(string(b))
		return nil
	})
	return val, err
}

// ensureSysctl sets a /proc/sys key in the namespace unless it already has the value.
func (r nsRunner) ensureSysctl(key, value string) error {
	if cur, err := r.readSysctl(key); err == nil && cur == value {
		return nil
	}
	return r.do(func() error {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}
