package pods

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// DefaultPrefix is the sandbox name prefix for node: the name of the named network
// namespace this process runs in (as under `ip netns exec NAME`), else node. Agents of
// equally named nodes in different namespaces then never touch each other's sandboxes.
func DefaultPrefix(node string) string {
	var self unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/net", &self) != nil {
		return node
	}
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(netnsDir, e.Name()), &st) == nil && st.Dev == self.Dev && st.Ino == self.Ino {
			return e.Name()
		}
	}
	return node
}

// Cleanup removes what an agent may have left behind: it kills every process whose
// environment marks it as started for a sandbox with prefix, deletes the veths in the
// current network namespace whose alias is such a sandbox name, and unmounts and removes
// those named network namespaces.
func Cleanup(prefix string) error {
	var errs []error
	killed := 0
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, path := range procs {
		environ, err := os.ReadFile(path)
		if err != nil {
			continue // gone already, or a kernel thread
		}
		for _, kv := range bytes.Split(environ, []byte{0}) {
			name, ok := bytes.CutPrefix(kv, []byte(SandboxEnv+"="))
			if !ok || !IsSandboxOf(prefix, string(name)) {
				continue
			}
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(path))); err == nil && syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
			break
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("listing links: %w", err))
	}
	for _, link := range links {
		if _, ok := link.(*netlink.Veth); ok && IsSandboxOf(prefix, link.Attrs().Alias) {
			if err := netlink.LinkDel(link); err != nil {
				errs = append(errs, fmt.Errorf("deleting veth %s: %w", link.Attrs().Name, err))
			}
		}
	}
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !os.IsNotExist(err) {
		errs = append(errs, fmt.Errorf("listing %s: %w", netnsDir, err))
	}
	removed := 0
	for _, e := range entries {
		if IsSandboxOf(prefix, e.Name()) {
			if err := removeNamedNetns(e.Name()); err != nil {
				errs = append(errs, err)
				continue
			}
			removed++
		}
	}
	klog.InfoS("Cleaned up sandbox leftovers", "prefix", prefix, "killedProcesses", killed, "removedNamespaces", removed)
	return errors.Join(errs...)
}
