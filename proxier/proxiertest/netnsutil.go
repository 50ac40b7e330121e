package proxiertest

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
const netnsDir = "/run/netns"

// inNS runs fn on a fresh goroutine whose OS thread is switched into ns, and waits for it.
// The thread is switched back afterwards; if that fails, the goroutine exits still locked, so
// the Go runtime discards the thread instead of reusing it in the wrong namespace. Sockets fn
// opens stay in ns after it returns and may be used from any goroutine.
func inNS(ns netns.NsHandle, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("getting the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("entering network namespace %s: %w", ns, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			done <- errors.Join(fnErr, fmt.Errorf("leaving network namespace %s: %w", ns, err))
			return // still locked: the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// newNamedNS creates the network namespace /run/netns/name (as `ip netns add name`) without
// moving the calling goroutine's thread.
func newNamedNS(name string) (netns.NsHandle, error) {
	h := netns.None()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("getting the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		created, createErr := netns.NewNamed(name)
		if err := netns.Set(orig); err != nil {
			if createErr == nil {
				created.Close()
			}
			done <- fmt.Errorf("leaving new network namespace %s: %w", name, err)
			return // still locked: the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		if createErr != nil {
			done <- fmt.Errorf("creating network namespace %s: %w", name, createErr)
			return
		}
		h = created
		done <- nil
	}()
	if err := <-done; err != nil {
		return netns.None(), err
	}
	return h, nil
}

// setSysctls writes "net/..." keys (relative to /proc/sys) in network namespace ns.
func setSysctls(ns netns.NsHandle, kv map[string]string) error {
	return inNS(ns, func() error {
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return fmt.Errorf("setting sysctl %s=%s: %w", k, v, err)
			}
		}
		return nil
	})
}

// namedNSWithPrefix lists the named network namespaces whose name starts with prefix.
func namedNSWithPrefix(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", netnsDir, err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
