package userspace

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNS is a named network namespace a kernel test created (named so that `ip netns exec`
// and `nft` can reach it while debugging).
type testNS struct {
	name   string
	handle netns.NsHandle
	nl     *netlink.Handle
}

// requireRoot skips a test that needs root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and nftables tables")
	}
}

// newTestNS creates a namespace with lo up; it is deleted at cleanup.
func newTestNS(t *testing.T, role string) *testNS {
	t.Helper()
	requireRoot(t)
	name := fmt.Sprintf("usp-%s-%06d", role, rand.IntN(1000000))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("getting the current network namespace: %v", err)
	}
	defer orig.Close()
	handle, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("creating network namespace %s: %v", name, err)
	}
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // never reuse a thread left in the test namespace
		t.Fatalf("restoring the original network namespace: %v", err)
	}
	ns := &testNS{name: name, handle: handle}
	t.Cleanup(func() {
		_ = handle.Close()
		_ = netns.DeleteNamed(name)
	})
	ns.nl, err = netlink.NewHandleAt(handle)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	t.Cleanup(ns.nl.Close)
	lo, err := ns.nl.LinkByName("lo")
	if err == nil {
		err = ns.nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("bringing lo up in %s: %v", name, err)
	}
	return ns
}

// fd returns the namespace's file descriptor.
func (ns *testNS) fd() int { return int(ns.handle) }

// run runs fn with the calling thread in the namespace (sockets fn creates live there).
func (ns *testNS) run(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("getting the current network namespace: %v", err)
	}
	defer orig.Close()
	if err := netns.Set(ns.handle); err != nil {
		t.Fatalf("entering %s: %v", ns.name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			runtime.LockOSThread() // never reuse a thread left in the test namespace
			t.Errorf("leaving %s: %v", ns.name, err)
		}
	}()
	fn()
}

// exec runs a command in the namespace and returns its output.
func (ns *testNS) exec(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name}, args...)...).CombinedOutput()
	return string(out), err
}

// mustExec runs a command in the namespace and fails the test on error.
func (ns *testNS) mustExec(t *testing.T, args ...string) string {
	t.Helper()
	out, err := ns.exec(t, args...)
	if err != nil {
		t.Fatalf("%s in %s: %v\n%s", strings.Join(args, " "), ns.name, err, out)
	}
	return out
}

// addAddr adds an address (without duplicate address detection for IPv6).
func (ns *testNS) addAddr(t *testing.T, link netlink.Link, prefix string) {
	t.Helper()
	addr, err := netlink.ParseAddr(prefix)
	if err != nil {
		t.Fatalf("parsing %s: %v", prefix, err)
	}
	addr.Flags = 0x02 // IFA_F_NODAD
	if err := ns.nl.AddrAdd(link, addr); err != nil {
		t.Fatalf("adding %s in %s: %v", prefix, ns.name, err)
	}
}

// addDefaultRoute adds a default route via gw.
func (ns *testNS) addDefaultRoute(t *testing.T, gw netip.Addr) {
	t.Helper()
	dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if gw.Is6() {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	if err := ns.nl.RouteAdd(&netlink.Route{Dst: dst, Gw: gw.AsSlice()}); err != nil {
		t.Fatalf("default route via %s in %s: %v", gw, ns.name, err)
	}
}

// vethPair connects two namespaces with a veth pair named aName (in a) and bName (in b), both
// up, and returns the two ends.
func vethPair(t *testing.T, a *testNS, aName string, b *testNS, bName string) (netlink.Link, netlink.Link) {
	t.Helper()
	peerTmp := fmt.Sprintf("uspv%06d", rand.IntN(1000000))
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: peerTmp}
	if err := a.nl.LinkAdd(veth); err != nil {
		t.Fatalf("creating veth %s in %s: %v", aName, a.name, err)
	}
	peer, err := a.nl.LinkByName(peerTmp)
	if err == nil {
		err = a.nl.LinkSetNsFd(peer, b.fd())
	}
	if err != nil {
		t.Fatalf("moving the veth peer to %s: %v", b.name, err)
	}
	peer, err = b.nl.LinkByName(peerTmp)
	if err == nil {
		err = b.nl.LinkSetName(peer, bName)
	}
	if err != nil {
		t.Fatalf("renaming the veth peer in %s: %v", b.name, err)
	}
	aLink, errA := a.nl.LinkByName(aName)
	bLink, errB := b.nl.LinkByName(bName)
	if errA != nil || errB != nil {
		t.Fatalf("finding the veth ends: %v %v", errA, errB)
	}
	for _, up := range []struct {
		ns   *testNS
		link netlink.Link
	}{{a, aLink}, {b, bLink}} {
		if err := up.ns.nl.LinkSetUp(up.link); err != nil {
			t.Fatalf("bringing %s up: %v", up.link.Attrs().Name, err)
		}
	}
	return aLink, bLink
}
