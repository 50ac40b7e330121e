package pods

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// netnsDir is where named network namespaces are mounted (as by `ip netns`).
const netnsDir = "/run/netns"

// NetnsRuntime is the Runtime of a real node: named network namespaces on a bridge.
type NetnsRuntime struct {
	bridge   string
	gateways []netip.Prefix
	node     *netlink.Handle
}

// NewNetnsRuntime returns a runtime in nodeNS (netns.None(): the current one), creating
// bridge there if missing and giving it the first address of each pod CIDR.
func NewNetnsRuntime(nodeNS netns.NsHandle, bridge string, podCIDRs []netip.Prefix) (*NetnsRuntime, error) {
	handle, err := netlink.NewHandleAt(nodeNS)
	if err != nil {
		return nil, fmt.Errorf("opening netlink in the node namespace: %w", err)
	}
	r := &NetnsRuntime{bridge: bridge, node: handle}
	br, err := handle.LinkByName(bridge)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		if err = handle.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}); err == nil {
			br, err = handle.LinkByName(bridge)
		}
	}
	for _, c := range podCIDRs {
		r.gateways = append(r.gateways, Gateway(c))
		if err == nil {
			err = handle.AddrReplace(br, address(Gateway(c)))
		}
	}
	if err == nil {
		err = handle.LinkSetUp(br)
	}
	if err != nil {
		handle.Close()
		return nil, fmt.Errorf("setting up bridge %s: %w", bridge, err)
	}
	return r, nil
}

// address is p as a netlink address, without IPv6 duplicate address detection.
func address(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// vethName is the node-side interface name of sandbox, within IFNAMSIZ.
func vethName(sandbox string) string { return "pa" + hash8(sandbox) }

// inThread runs fn on a fresh OS thread that is discarded afterwards, so a thread whose
// network namespace fn changed never runs other goroutines.
func inThread(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		done <- fn()
	}()
	return <-done
}

// CreateSandbox creates the namespace, its eth0 peered with a bridge port aliased name
// (for Cleanup), addrs and routes via the bridge.
func (r *NetnsRuntime) CreateSandbox(name string, addrs []netip.Prefix) error {
	var ns netns.NsHandle
	if err := inThread(func() (err error) { ns, err = netns.NewNamed(name); return err }); err != nil {
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	defer ns.Close()
	if err := r.wire(name, ns, addrs); err != nil {
		return errors.Join(fmt.Errorf("wiring sandbox %s: %w", name, err), r.RemoveSandbox(name))
	}
	return nil
}

func (r *NetnsRuntime) wire(name string, ns netns.NsHandle, addrs []netip.Prefix) error {
	br, err := r.node.LinkByName(r.bridge)
	if err != nil {
		return fmt.Errorf("finding bridge %s: %w", r.bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: vethName(name), Flags: net.FlagUp, MasterIndex: br.Attrs().Index},
		PeerName:  "eth0", PeerNamespace: netlink.NsFd(ns),
	}
	if err := r.node.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s: %w", veth.Name, err)
	}
	if err := errors.Join(r.node.LinkSetAlias(veth, name), r.node.LinkSetHairpin(veth, true)); err != nil {
		return fmt.Errorf("configuring veth %s: %w", veth.Name, err)
	}
	pod, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("opening netlink in the sandbox: %w", err)
	}
	defer pod.Close()
	lo, err := pod.LinkByName("lo")
	eth0, err2 := pod.LinkByName("eth0")
	if err = errors.Join(err, err2); err == nil {
		err = errors.Join(pod.LinkSetUp(lo), pod.LinkSetUp(eth0))
	}
	for _, a := range addrs {
		if err == nil {
			err = pod.AddrAdd(eth0, address(a))
		}
	}
	for _, gw := range r.gateways {
		if err == nil {
			err = pod.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.Addr().AsSlice()})
		}
	}
	if err != nil {
		return fmt.Errorf("configuring eth0 %v via %v: %w", addrs, r.gateways, err)
	}
	return nil
}

// RemoveSandbox deletes the sandbox's veth and unmounts and removes its namespace.
func (r *NetnsRuntime) RemoveSandbox(name string) error {
	var err error
	if link, findErr := r.node.LinkByName(vethName(name)); findErr == nil {
		err = r.node.LinkDel(link)
	}
	return errors.Join(err, removeNamedNetns(name))
}

func removeNamedNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	_ = unix.Unmount(path, unix.MNT_DETACH) // not mounted in this mount namespace is fine
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing network namespace %s: %w", name, err)
	}
	return nil
}

// Close releases the netlink handle (sandboxes are left to RemoveSandbox and Cleanup).
func (r *NetnsRuntime) Close() error {
	r.node.Close()
	return nil
}

// start starts spec's command in a process group of its own, in its sandbox (entered
// by the forking thread), with output to out (nil discards it).
func (r *NetnsRuntime) start(spec ProcessSpec, out io.Writer) (*osProcess, error) {
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env, cmd.Dir, cmd.SysProcAttr = spec.Env, spec.Dir, &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr, cmd.WaitDelay = out, out, time.Second
	err := inThread(func() error {
		if spec.Sandbox == "" {
			return cmd.Start()
		}
		ns, err := netns.GetFromName(spec.Sandbox)
		if err != nil {
			return fmt.Errorf("opening sandbox %s: %w", spec.Sandbox, err)
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("entering sandbox %s: %w", spec.Sandbox, err)
		}
		return cmd.Start()
	})
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", spec.Argv[0], err)
	}
	return &osProcess{cmd: cmd}, nil
}

// Start starts a container process with its output appended to spec.LogPath.
func (r *NetnsRuntime) Start(spec ProcessSpec) (Process, error) {
	var out io.Writer
	if spec.LogPath != "" {
		if err := os.MkdirAll(filepath.Dir(spec.LogPath), 0o755); err != nil {
			return nil, fmt.Errorf("creating log directory: %w", err)
		}
		f, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("opening container log: %w", err)
		}
		defer f.Close()
		out = f
	}
	return r.start(spec, out)
}

// Exec runs a probe command, killing its process group when ctx ends.
func (r *NetnsRuntime) Exec(ctx context.Context, spec ProcessSpec) (int, string, error) {
	var out bytes.Buffer
	p, err := r.start(spec, &out)
	if err != nil {
		return -1, "", err
	}
	stop := context.AfterFunc(ctx, func() { _ = p.Signal(syscall.SIGKILL) })
	defer stop()
	code := p.Wait()
	if err := ctx.Err(); err != nil {
		return code, out.String(), fmt.Errorf("running %s: %w", spec.Argv[0], err)
	}
	return code, out.String(), nil
}

type osProcess struct{ cmd *exec.Cmd }

func (p *osProcess) Signal(sig syscall.Signal) error {
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

func (p *osProcess) Wait() int {
	_ = p.cmd.Wait()
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return p.cmd.ProcessState.ExitCode()
}

// DefaultPrefix is the name of the named network namespace this process runs in (as
// under `ip netns exec NAME`), else node: agents in other namespaces keep apart.
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

// Cleanup kills the processes whose SandboxEnv is a sandbox with prefix, and deletes
// such sandboxes' veths (in the current namespace) and network namespaces.
func Cleanup(prefix string) error {
	var errs []error
	killed, removed := 0, 0
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, path := range procs {
		environ, _ := os.ReadFile(path) // unreadable for kernel threads and exited processes
		for kv := range strings.SplitSeq(string(environ), "\x00") {
			name, ok := strings.CutPrefix(kv, SandboxEnv+"=")
			if !ok || !IsSandboxOf(prefix, name) {
				continue
			}
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(path))); err == nil && syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
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
	for _, e := range entries {
		if !IsSandboxOf(prefix, e.Name()) {
			continue
		}
		if err := removeNamedNetns(e.Name()); err != nil {
			errs = append(errs, err)
		} else {
			removed++
		}
	}
	klog.InfoS("Cleaned up sandbox leftovers", "prefix", prefix, "killedProcesses", killed, "removedNamespaces", removed)
	return errors.Join(errs...)
}
