package pods

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are mounted (as by `ip netns`).
const netnsDir = "/run/netns"

// NetnsRuntime is the Runtime of a real node: named network namespaces with a veth on
// a Linux bridge, and host processes started inside them.
type NetnsRuntime struct {
	bridge   string
	gateways []netip.Prefix
	node     *netlink.Handle

	mu        sync.Mutex
	sandboxes map[string]netns.NsHandle
}

// NewNetnsRuntime returns a runtime working in the network namespace nodeNS: it creates
// bridge there if missing, and gives it the first address of each pod CIDR.
func NewNetnsRuntime(nodeNS netns.NsHandle, bridge string, podCIDRs []netip.Prefix) (*NetnsRuntime, error) {
	handle, err := netlink.NewHandleAt(nodeNS)
	if err != nil {
		return nil, fmt.Errorf("opening netlink in the node namespace: %w", err)
	}
	r := &NetnsRuntime{bridge: bridge, node: handle, sandboxes: map[string]netns.NsHandle{}}
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

// address is p as a netlink address; IPv6 ones skip duplicate address detection so
// they are usable at once.
func address(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// vethName is the node-side interface name of sandbox: "pa" and a hash, within IFNAMSIZ.
func vethName(sandbox string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(sandbox))
	return fmt.Sprintf("pa%08x", h.Sum32())
}

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

// CreateSandbox creates the named namespace with eth0 holding addrs, a veth peer on the
// bridge (its alias is the sandbox name, for Cleanup) and default routes via the bridge.
func (r *NetnsRuntime) CreateSandbox(name string, addrs []netip.Prefix) error {
	var ns netns.NsHandle
	if err := inThread(func() (err error) { ns, err = netns.NewNamed(name); return err }); err != nil {
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	r.mu.Lock()
	r.sandboxes[name] = ns
	r.mu.Unlock()
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
		LinkAttrs: netlink.LinkAttrs{Name: vethName(name), MasterIndex: br.Attrs().Index},
		PeerName:  "eth0", PeerNamespace: netlink.NsFd(ns),
	}
	if err := r.node.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s: %w", veth.Name, err)
	}
	host, err := r.node.LinkByName(veth.Name)
	if err == nil {
		err = errors.Join(r.node.LinkSetAlias(host, name), r.node.LinkSetHairpin(host, true), r.node.LinkSetUp(host))
	}
	if err != nil {
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
	r.mu.Lock()
	ns, ok := r.sandboxes[name]
	delete(r.sandboxes, name)
	r.mu.Unlock()
	if ok {
		_ = ns.Close()
	}
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

// start starts spec's command in its sandbox's namespace (the child inherits the
// namespace of the thread that forks it), in a process group of its own.
func (r *NetnsRuntime) start(spec ProcessSpec, stdout *os.File, out *bytes.Buffer) (*osProcess, error) {
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env, cmd.Dir, cmd.SysProcAttr = spec.Env, spec.Dir, &syscall.SysProcAttr{Setpgid: true}
	if stdout != nil {
		cmd.Stdout, cmd.Stderr = stdout, stdout
	} else if out != nil {
		cmd.Stdout, cmd.Stderr, cmd.WaitDelay = out, out, time.Second
	}
	r.mu.Lock()
	ns, ok := r.sandboxes[spec.Sandbox]
	r.mu.Unlock()
	var err error
	switch {
	case spec.Sandbox == "":
		err = cmd.Start()
	case !ok:
		err = fmt.Errorf("no sandbox %s", spec.Sandbox)
	default:
		err = inThread(func() error {
			if err := netns.Set(ns); err != nil {
				return fmt.Errorf("entering %s: %w", spec.Sandbox, err)
			}
			return cmd.Start()
		})
	}
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", spec.Argv[0], err)
	}
	return &osProcess{cmd: cmd}, nil
}

// Start starts a container process with its output appended to spec.LogPath.
func (r *NetnsRuntime) Start(spec ProcessSpec) (Process, error) {
	var log *os.File
	if spec.LogPath != "" {
		if err := os.MkdirAll(filepath.Dir(spec.LogPath), 0o755); err != nil {
			return nil, fmt.Errorf("creating log directory: %w", err)
		}
		f, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("opening container log: %w", err)
		}
		defer f.Close()
		log = f
	}
	return r.start(spec, log, nil)
}

// Exec runs a probe command, killing its process group when ctx ends.
func (r *NetnsRuntime) Exec(ctx context.Context, spec ProcessSpec) (int, string, error) {
	var out bytes.Buffer
	p, err := r.start(spec, nil, &out)
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
