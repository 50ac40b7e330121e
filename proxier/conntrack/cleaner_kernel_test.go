package conntrack

import (
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// newNetnsConntrackHandle creates a fresh network namespace and returns it
// with a netfilter netlink handle bound to it; the test thread's namespace is
// restored before returning and everything is released at cleanup.
func newNetnsConntrackHandle(t *testing.T) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and conntrack entries over netlink")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	origNS, err := netns.Get()
	if err != nil {
		t.Fatalf("getting the current network namespace: %v", err)
	}
	t.Cleanup(func() { _ = origNS.Close() })
	testNS, err := netns.New()
	if err != nil {
		t.Fatalf("creating a network namespace: %v", err)
	}
	t.Cleanup(func() { _ = testNS.Close() })
	if err := netns.Set(origNS); err != nil {
		// The thread is stuck in the test namespace: keep it locked so the
		// runtime discards it when the goroutine ends.
		runtime.LockOSThread()
		t.Fatalf("restoring the original network namespace: %v", err)
	}
	handle, err := netlink.NewHandleAt(testNS, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatalf("opening a netfilter netlink handle in the test namespace: %v", err)
	}
	t.Cleanup(handle.Close)
	if _, err := handle.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET); err != nil {
		t.Skipf("conntrack table not available over netlink (is nf_conntrack loaded?): %v", err)
	}
	return testNS, handle
}

// inNamespace runs fn on a thread switched to ns, then switches back.
func inNamespace(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	origNS, err := netns.Get()
	if err != nil {
		t.Fatalf("getting the current network namespace: %v", err)
	}
	defer origNS.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatalf("entering the test network namespace: %v", err)
	}
	defer func() {
		if err := netns.Set(origNS); err != nil {
			runtime.LockOSThread() // never reuse a thread left in the test namespace
			t.Errorf("restoring the original network namespace: %v", err)
		}
	}()
	fn()
}

// cleanerFactories are the ways to reach a namespace's table: the three
// transports of the Cleaner.
var cleanerFactories = []struct {
	name string
	// sctp tells whether the transport cleans SCTP.
	sctp bool
	// clean runs CleanStale through that transport in ns.
	clean func(t *testing.T, ns netns.NsHandle, h *netlink.Handle, family v1.IPFamily, targets []Target) (int, error)
}{
	{"NewCleaner(handle)", false, func(_ *testing.T, _ netns.NsHandle, h *netlink.Handle, family v1.IPFamily, targets []Target) (int, error) {
		return NewCleaner(h).CleanStale(family, targets)
	}},
	{"NewCleanerAt(ns)", true, func(t *testing.T, ns netns.NsHandle, _ *netlink.Handle, family v1.IPFamily, targets []Target) (int, error) {
		cleaner, err := NewCleanerAt(ns)
		if err != nil {
			t.Fatalf("NewCleanerAt: %v", err)
		}
		defer cleaner.Close()
		return cleaner.CleanStale(family, targets)
	}},
	{"NewCleaner(nil) in the namespace", true, func(t *testing.T, ns netns.NsHandle, _ *netlink.Handle, family v1.IPFamily, targets []Target) (n int, err error) {
		cleaner := NewCleaner(nil)
		inNamespace(t, ns, func() { n, err = cleaner.CleanStale(family, targets) })
		return n, err
	}},
}

// kernelFlow describes a conntrack entry to create: orig src -> orig dst,
// answered from replySrc to replyDst.
type kernelFlow struct {
	name                                 string
	protocol                             uint8
	origSrc, origDst, replySrc, replyDst string
	wantKept                             bool
}

// conntrackFlow converts the description into a netlink flow.
func (f kernelFlow) conntrackFlow() *netlink.ConntrackFlow {
	origSrc, origDst := netip.MustParseAddrPort(f.origSrc), netip.MustParseAddrPort(f.origDst)
	replySrc, replyDst := netip.MustParseAddrPort(f.replySrc), netip.MustParseAddrPort(f.replyDst)
	family := uint8(unix.AF_INET)
	if origDst.Addr().Is6() {
		family = unix.AF_INET6
	}
	flow := &netlink.ConntrackFlow{
		FamilyType: family,
		Forward: netlink.IPTuple{
			Protocol: f.protocol, SrcIP: origSrc.Addr().AsSlice(), SrcPort: origSrc.Port(),
			DstIP: origDst.Addr().AsSlice(), DstPort: origDst.Port(),
		},
		Reverse: netlink.IPTuple{
			Protocol: f.protocol, SrcIP: replySrc.Addr().AsSlice(), SrcPort: replySrc.Port(),
			DstIP: replyDst.Addr().AsSlice(), DstPort: replyDst.Port(),
		},
		TimeOut: 600,
	}
	if f.protocol == unix.IPPROTO_TCP {
		flow.ProtoInfo = &netlink.ProtoInfoTCP{State: 3} // TCP_CONNTRACK_ESTABLISHED
	}
	return flow
}

// createFlows creates the entries in the namespace behind handle.
func createFlows(t *testing.T, handle *netlink.Handle, flows []kernelFlow) {
	t.Helper()
	for _, f := range flows {
		ct := f.conntrackFlow()
		if err := handle.ConntrackCreate(netlink.ConntrackTable, netlink.InetFamily(ct.FamilyType), ct); err != nil {
			t.Fatalf("creating conntrack entry %q: %v", f.name, err)
		}
	}
}

// listedFlowKey identifies an entry by protocol, orig src/dst and reply src.
type listedFlowKey struct {
	protocol                   uint8
	origSrc, origDst, replySrc netip.AddrPort
}

func keyOfListed(flow *netlink.ConntrackFlow) listedFlowKey {
	addrPort := func(ip []byte, port uint16) netip.AddrPort {
		addr, _ := netip.AddrFromSlice(ip)
		return netip.AddrPortFrom(addr.Unmap(), port)
	}
	return listedFlowKey{
		protocol: flow.Forward.Protocol,
		origSrc:  addrPort(flow.Forward.SrcIP, flow.Forward.SrcPort),
		origDst:  addrPort(flow.Forward.DstIP, flow.Forward.DstPort),
		replySrc: addrPort(flow.Reverse.SrcIP, flow.Reverse.SrcPort),
	}
}

func keyOfKernelFlow(f kernelFlow) listedFlowKey {
	return listedFlowKey{
		protocol: f.protocol,
		origSrc:  netip.MustParseAddrPort(f.origSrc),
		origDst:  netip.MustParseAddrPort(f.origDst),
		replySrc: netip.MustParseAddrPort(f.replySrc),
	}
}

// checkTable lists the family's table and compares it with the flows
// expected to be present.
func checkTable(t *testing.T, handle *netlink.Handle, family netlink.InetFamily, want []kernelFlow) {
	t.Helper()
	listed, err := handle.ConntrackTableList(netlink.ConntrackTable, family)
	if err != nil {
		t.Fatalf("listing the conntrack table: %v", err)
	}
	present := make(map[listedFlowKey]bool, len(listed))
	for _, flow := range listed {
		present[keyOfListed(flow)] = true
	}
	for _, f := range want {
		if got := present[keyOfKernelFlow(f)]; got != f.wantKept {
			t.Errorf("flow %q: present=%v, want %v", f.name, got, f.wantKept)
		}
	}
	if len(listed) != countKept(want) {
		t.Errorf("table family %d has %d entries, want %d", family, len(listed), countKept(want))
	}
}

func countKept(flows []kernelFlow) int {
	n := 0
	for _, f := range flows {
		if f.wantKept {
			n++
		}
	}
	return n
}

// kernelTargets are the services of the kernel test: a DNS service with a
// load-balancer IP and a node port, a service that just got its first
// endpoint, a removed port, a TCP service, their IPv6 twin, an SCTP service.
var kernelTargets = []Target{
	{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.10", "203.0.113.10"), Port: 53, NodePort: 30053,
		Serving: addrPorts("10.244.1.5:53")},
	{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.20"), Port: 80, Serving: addrPorts("10.244.2.7:8080")},
	{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.30"), Port: 9000, NodePort: 30900},
	{Protocol: v1.ProtocolTCP, VIPs: addrs("10.96.0.40"), Port: 80},
	{Protocol: v1.ProtocolUDP, VIPs: addrs("fd00:96::10"), Port: 53, Serving: addrPorts("[fd00:244::5]:53")},
	{Protocol: v1.ProtocolSCTP, VIPs: addrs("10.96.0.50"), Port: 7000, Serving: addrPorts("10.244.5.5:7000")},
}

const udp, tcp, sctp = unix.IPPROTO_UDP, unix.IPPROTO_TCP, unix.IPPROTO_SCTP

var kernelIPv4Flows = []kernelFlow{
	{"VIP, serving endpoint", udp, "10.0.0.1:1001", "10.96.0.10:53", "10.244.1.5:53", "10.0.0.1:1001", true},
	{"VIP, endpoint gone", udp, "10.0.0.1:1002", "10.96.0.10:53", "10.244.9.9:53", "10.0.0.1:1002", false},
	{"LB IP, endpoint gone", udp, "10.0.0.1:1003", "203.0.113.10:53", "10.244.9.9:53", "10.0.0.1:1003", false},
	{"VIP never DNATed, service now has endpoints", udp, "10.0.0.1:1004", "10.96.0.20:80", "10.96.0.20:80", "10.0.0.1:1004", false},
	{"VIP DNATed to the new endpoint", udp, "10.0.0.1:1005", "10.96.0.20:80", "10.244.2.7:8080", "10.0.0.1:1005", true},
	{"node port on a local IP, endpoint gone", udp, "10.0.0.1:1006", "192.168.1.10:30053", "10.244.9.9:53", "192.168.1.10:1006", false},
	{"node port on a local IP, serving endpoint", udp, "10.0.0.1:1007", "172.16.0.1:30053", "10.244.1.5:53", "172.16.0.1:1007", true},
	{"removed service port", udp, "10.0.0.1:1008", "10.96.0.30:9000", "10.244.3.3:9000", "10.0.0.1:1008", false},
	{"node port of a service without endpoints", udp, "10.0.0.1:1009", "192.168.1.10:30900", "10.244.3.3:9000", "192.168.1.10:1009", true},
	{"TCP flow to the UDP VIP, endpoint gone", tcp, "10.0.0.1:1010", "10.96.0.10:53", "10.244.9.9:53", "10.0.0.1:1010", true},
	{"TCP service", tcp, "10.0.0.1:1011", "10.96.0.40:80", "10.244.4.4:80", "10.0.0.1:1011", true},
	{"different VIP", udp, "10.0.0.1:1012", "10.96.0.99:53", "10.244.9.9:53", "10.0.0.1:1012", true},
}

var kernelIPv6Flows = []kernelFlow{
	{"IPv6 VIP, serving endpoint", udp, "[fd00::1]:2001", "[fd00:96::10]:53", "[fd00:244::5]:53", "[fd00::1]:2001", true},
	{"IPv6 VIP, endpoint gone", udp, "[fd00::1]:2002", "[fd00:96::10]:53", "[fd00:244::9]:53", "[fd00::1]:2002", false},
	{"IPv6 VIP never DNATed", udp, "[fd00::1]:2003", "[fd00:96::10]:53", "[fd00:96::10]:53", "[fd00::1]:2003", false},
}

var kernelSCTPFlows = []kernelFlow{
	{"SCTP VIP, serving endpoint", sctp, "10.0.0.1:3001", "10.96.0.50:7000", "10.244.5.5:7000", "10.0.0.1:3001", true},
	{"SCTP VIP, endpoint gone", sctp, "10.0.0.1:3002", "10.96.0.50:7000", "10.244.9.9:7000", "10.0.0.1:3002", false},
}

// allPresent returns flows marked as all present (before cleaning).
func allPresent(flows []kernelFlow) []kernelFlow {
	out := slices.Clone(flows)
	for i := range out {
		out[i].wantKept = true
	}
	return out
}

func TestCleanStaleKernel(t *testing.T) {
	for _, factory := range cleanerFactories {
		t.Run(factory.name, func(t *testing.T) {
			ns, handle := newNetnsConntrackHandle(t)
			createFlows(t, handle, kernelIPv4Flows)
			createFlows(t, handle, kernelIPv6Flows)
			checkTable(t, handle, unix.AF_INET, allPresent(kernelIPv4Flows))
			checkTable(t, handle, unix.AF_INET6, allPresent(kernelIPv6Flows))

			deleted, err := factory.clean(t, ns, handle, v1.IPv4Protocol, kernelTargets)
			if err != nil {
				t.Fatalf("CleanStale(IPv4): %v", err)
			}
			if want := len(kernelIPv4Flows) - countKept(kernelIPv4Flows); deleted != want {
				t.Errorf("CleanStale(IPv4) deleted %d flows, want %d", deleted, want)
			}
			checkTable(t, handle, unix.AF_INET, kernelIPv4Flows)
			checkTable(t, handle, unix.AF_INET6, allPresent(kernelIPv6Flows))

			deleted, err = factory.clean(t, ns, handle, v1.IPv6Protocol, kernelTargets)
			if err != nil {
				t.Fatalf("CleanStale(IPv6): %v", err)
			}
			if want := len(kernelIPv6Flows) - countKept(kernelIPv6Flows); deleted != want {
				t.Errorf("CleanStale(IPv6) deleted %d flows, want %d", deleted, want)
			}
			checkTable(t, handle, unix.AF_INET6, kernelIPv6Flows)
			checkTable(t, handle, unix.AF_INET, kernelIPv4Flows)

			// A second pass finds nothing left to delete.
			if deleted, err := factory.clean(t, ns, handle, v1.IPv4Protocol, kernelTargets); err != nil || deleted != 0 {
				t.Errorf("second CleanStale(IPv4) = %d, %v; want 0, nil", deleted, err)
			}
		})
	}
}

func TestCleanStaleKernelSCTP(t *testing.T) {
	for _, factory := range cleanerFactories {
		t.Run(factory.name, func(t *testing.T) {
			ns, handle := newNetnsConntrackHandle(t)
			first := kernelSCTPFlows[0].conntrackFlow()
			if err := handle.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, first); err != nil {
				t.Skipf("this kernel does not accept creating an SCTP conntrack entry over netlink: %v", err)
			}
			createFlows(t, handle, kernelSCTPFlows[1:])
			if n := countTable(t, handle, unix.AF_INET); n != len(kernelSCTPFlows) {
				t.Fatalf("table has %d entries after creating %d SCTP flows", n, len(kernelSCTPFlows))
			}

			deleted, err := factory.clean(t, ns, handle, v1.IPv4Protocol, kernelTargets)
			if err != nil {
				t.Fatalf("CleanStale(IPv4): %v", err)
			}
			want := 1
			if !factory.sctp {
				want = 0 // the netlink package cannot see SCTP ports: nothing may be touched
			}
			if deleted != want {
				t.Errorf("CleanStale(IPv4) deleted %d SCTP flows, want %d", deleted, want)
			}
			if n := countTable(t, handle, unix.AF_INET); n != len(kernelSCTPFlows)-want {
				t.Errorf("table has %d entries left, want %d", n, len(kernelSCTPFlows)-want)
			}
			if factory.sctp {
				checkSCTPKept(t, ns)
			}
		})
	}
}

// countTable returns the number of entries of the family's table.
func countTable(t *testing.T, handle *netlink.Handle, family netlink.InetFamily) int {
	t.Helper()
	listed, err := handle.ConntrackTableList(netlink.ConntrackTable, family)
	if err != nil {
		t.Fatalf("listing the conntrack table: %v", err)
	}
	return len(listed)
}

// checkSCTPKept lists the table with SCTP ports decoded and checks that the
// flow to the serving endpoint is the one left.
func checkSCTPKept(t *testing.T, ns netns.NsHandle) {
	t.Helper()
	table, err := newCtnetlinkTableAt(ns)
	if err != nil {
		t.Fatalf("opening the SCTP-aware table: %v", err)
	}
	defer table.close()
	var left []listedFlowKey
	lister := listingFilter(func(flow *netlink.ConntrackFlow) { left = append(left, keyOfListed(flow)) })
	if _, err := table.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, lister); err != nil {
		t.Fatalf("listing SCTP flows: %v", err)
	}
	if want := keyOfKernelFlow(kernelSCTPFlows[0]); len(left) != 1 || left[0] != want {
		t.Errorf("SCTP flows left = %+v, want only %+v", left, want)
	}
}

// listingFilter is a filter that records every flow and deletes none.
type listingFilter func(flow *netlink.ConntrackFlow)

func (f listingFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	f(flow)
	return false
}
