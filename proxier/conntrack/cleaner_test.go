package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// fakeTable is an in-memory conntrack table standing in for *netlink.Handle.
type fakeTable struct {
	flows []*netlink.ConntrackFlow
	// interrupts is how many upcoming dumps report NLM_F_DUMP_INTR after
	// processing only the first flow.
	interrupts int
	// failWith, if set, is returned by every dump before any deletion.
	failWith error
	dumps    int
	families []netlink.InetFamily
}

func (f *fakeTable) ConntrackDeleteFilters(_ netlink.ConntrackTableType, family netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error) {
	f.dumps++
	f.families = append(f.families, family)
	if f.failWith != nil {
		return 0, f.failWith
	}
	visible := f.flows
	var dumpErr error
	if f.interrupts > 0 {
		f.interrupts--
		visible = f.flows[:min(1, len(f.flows))]
		dumpErr = netlink.ErrDumpInterrupted
	}
	var kept []*netlink.ConntrackFlow
	deleted := uint(0)
	for i, flow := range f.flows {
		matched := false
		if i < len(visible) {
			for _, filter := range filters {
				matched = matched || filter.MatchConntrackFlow(flow)
			}
		}
		if matched {
			deleted++
		} else {
			kept = append(kept, flow)
		}
	}
	f.flows = kept
	return deleted, dumpErr
}

// testFlow builds a flow "orig src -> orig dst, reply from replySrc".
func testFlow(protocol uint8, origSrc, origDst, replySrc string) *netlink.ConntrackFlow {
	src := netip.MustParseAddrPort(origSrc)
	dst := netip.MustParseAddrPort(origDst)
	reply := netip.MustParseAddrPort(replySrc)
	family := uint8(unix.AF_INET)
	if dst.Addr().Is6() {
		family = unix.AF_INET6
	}
	return &netlink.ConntrackFlow{
		FamilyType: family,
		Forward: netlink.IPTuple{
			Protocol: protocol, SrcIP: src.Addr().AsSlice(), SrcPort: src.Port(),
			DstIP: dst.Addr().AsSlice(), DstPort: dst.Port(),
		},
		Reverse: netlink.IPTuple{
			Protocol: protocol, SrcIP: reply.Addr().AsSlice(), SrcPort: reply.Port(),
			DstIP: src.Addr().AsSlice(), DstPort: src.Port(),
		},
	}
}

func flowName(flow *netlink.ConntrackFlow) string {
	return fmt.Sprintf("%d %s:%d->%s:%d reply-src %s:%d", flow.Forward.Protocol,
		flow.Forward.SrcIP, flow.Forward.SrcPort, flow.Forward.DstIP, flow.Forward.DstPort,
		flow.Reverse.SrcIP, flow.Reverse.SrcPort)
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func addrPorts(s ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddrPort(a)
	}
	return out
}

func TestCleanStaleMatching(t *testing.T) {
	dnsTarget := Target{
		Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.10", "203.0.113.10", "fd00::10"),
		Port: 53, NodePort: 30053, Serving: addrPorts("10.244.1.5:53"),
	}
	tests := []struct {
		name    string
		targets []Target
		flow    *netlink.ConntrackFlow
		stale   bool
	}{
		{"cluster IP, serving endpoint", []Target{dnsTarget}, testFlow(udp, "10.0.0.1:1000", "10.96.0.10:53", "10.244.1.5:53"), false},
		{"cluster IP, gone endpoint", []Target{dnsTarget}, testFlow(udp, "10.0.0.1:1000", "10.96.0.10:53", "10.244.9.9:53"), true},
		{"cluster IP, serving IP but other port", []Target{dnsTarget}, testFlow(udp, "10.0.0.1:1000", "10.96.0.10:53", "10.244.1.5:54"), true},
		{"cluster IP, never DNATed", []Target{dnsTarget}, testFlow(udp, "10.0.0.1:1000", "10.96.0.10:53", "10.96.0.10:53"), true},
		{"load-balancer IP, gone endpoint", []Target{dnsTarget}, testFlow(udp, "10.0.0.1:1000", "203.0.113.10:53", "10.244.9.9:53"), true},
		{"node port on any IP, gone endpoint", []Target{dnsTarget}, testFlow(udp, "10.0.0.1:1000", "192.168.1.1:30053", "10.244.9.9:53"), true},
		{"node port, serving endpoint", []Target{dnsTarget}, testFlow(udp, "10.0.0.1:1000", "192.168.1.1:30053", "10.244.1.5:53"), false},
		{"other VIP", []Target{dnsTarget}, testFlow(udp, "10.0.0.1:1000", "10.96.0.99:53", "10.244.9.9:53"), false},
		{"other port on the VIP", []Target{dnsTarget}, testFlow(udp, "10.0.0.1:1000", "10.96.0.10:54", "10.244.9.9:54"), false},
		{"TCP flow to a UDP target", []Target{dnsTarget}, testFlow(tcp, "10.0.0.1:1000", "10.96.0.10:53", "10.244.9.9:53"), false},
		{"SCTP flow to a UDP target", []Target{dnsTarget}, testFlow(sctp, "10.0.0.1:1000", "10.96.0.10:53", "10.244.9.9:53"), false},
		{"TCP target is never cleaned",
			[]Target{{Protocol: v1.ProtocolTCP, VIPs: addrs("10.96.0.20"), Port: 80}},
			testFlow(tcp, "10.0.0.1:1000", "10.96.0.20:80", "10.244.9.9:80"), false},
		{"SCTP target, gone endpoint",
			[]Target{{Protocol: v1.ProtocolSCTP, VIPs: addrs("10.96.0.30"), Port: 7000, Serving: addrPorts("10.244.1.7:7000")}},
			testFlow(sctp, "10.0.0.1:1000", "10.96.0.30:7000", "10.244.9.9:7000"), true},
		{"removed port: no serving endpoints",
			[]Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.40"), Port: 9000, NodePort: 30900}},
			testFlow(udp, "10.0.0.1:1000", "10.96.0.40:9000", "10.244.1.1:9000"), true},
		{"node port not matched without serving endpoints",
			[]Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.40"), Port: 9000, NodePort: 30900}},
			testFlow(udp, "10.0.0.1:1000", "192.168.1.1:30900", "10.244.1.1:9000"), false},
		{"IPv6 frontend, gone endpoint",
			[]Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("fd00::10"), Port: 53, Serving: addrPorts("[fd00:244::5]:53")}},
			testFlow(udp, "[fd00::1]:1000", "[fd00::10]:53", "[fd00:244::9]:53"), true},
		{"IPv6 frontend, serving endpoint",
			[]Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("fd00::10"), Port: 53, Serving: addrPorts("[fd00:244::5]:53")}},
			testFlow(udp, "[fd00::1]:1000", "[fd00::10]:53", "[fd00:244::5]:53"), false},
		{"shared frontend kept if serving any target",
			[]Target{dnsTarget, {Protocol: v1.ProtocolUDP, VIPs: addrs("203.0.113.10"), Port: 53, Serving: addrPorts("10.244.7.7:53")}},
			testFlow(udp, "10.0.0.1:1000", "203.0.113.10:53", "10.244.7.7:53"), false},
		{"frontend match wins over another target's node port",
			[]Target{dnsTarget, {Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.50"), Port: 30053, Serving: addrPorts("10.244.5.5:30053")}},
			testFlow(udp, "10.0.0.1:1000", "10.96.0.50:30053", "10.244.5.5:30053"), false},
		{"invalid port target ignored",
			[]Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.60"), Port: 70000}},
			testFlow(udp, "10.0.0.1:1000", "10.96.0.60:4464", "10.244.5.5:4464"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			family := v1.IPv4Protocol
			if tc.flow.FamilyType == unix.AF_INET6 {
				family = v1.IPv6Protocol
			}
			table := &fakeTable{flows: []*netlink.ConntrackFlow{tc.flow}}
			deleted, err := newTestCleaner(table).CleanStale(family, tc.targets)
			if err != nil {
				t.Fatalf("CleanStale: %v", err)
			}
			wantDeleted := 0
			if tc.stale {
				wantDeleted = 1
			}
			if deleted != wantDeleted || len(table.flows) != 1-wantDeleted {
				t.Errorf("flow %s: deleted=%d, left=%d; want stale=%v", flowName(tc.flow), deleted, len(table.flows), tc.stale)
			}
		})
	}
}

func TestCleanStaleOneDumpPerCall(t *testing.T) {
	table := &fakeTable{flows: []*netlink.ConntrackFlow{
		testFlow(unix.IPPROTO_UDP, "10.0.0.1:1000", "10.96.0.10:53", "10.244.9.9:53"),
		testFlow(unix.IPPROTO_UDP, "10.0.0.2:1000", "10.96.0.11:53", "10.244.9.9:53"),
		testFlow(unix.IPPROTO_UDP, "10.0.0.3:1000", "10.96.0.12:53", "10.244.1.1:53"),
	}}
	targets := []Target{
		{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.10"), Port: 53},
		{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.11"), Port: 53},
		{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.12"), Port: 53, Serving: addrPorts("10.244.1.1:53")},
	}
	deleted, err := newTestCleaner(table).CleanStale(v1.IPv4Protocol, targets)
	if err != nil || deleted != 2 {
		t.Fatalf("CleanStale = %d, %v; want 2, nil", deleted, err)
	}
	if table.dumps != 1 || table.families[0] != unix.AF_INET {
		t.Errorf("dumps=%d families=%v; want one AF_INET dump", table.dumps, table.families)
	}
	if len(table.flows) != 1 || table.flows[0].Forward.DstIP.String() != "10.96.0.12" {
		t.Errorf("left %d flows, want only the one to 10.96.0.12", len(table.flows))
	}
}

func TestCleanStaleSkipsDumpWithoutCleanableTargets(t *testing.T) {
	table := &fakeTable{}
	targets := []Target{
		{Protocol: v1.ProtocolTCP, VIPs: addrs("10.96.0.10"), Port: 80},
		{Protocol: v1.ProtocolUDP, VIPs: addrs("fd00::10"), Port: 53}, // other family
	}
	deleted, err := newTestCleaner(table).CleanStale(v1.IPv4Protocol, targets)
	if err != nil || deleted != 0 || table.dumps != 0 {
		t.Errorf("CleanStale = %d, %v with %d dumps; want 0, nil, no dump", deleted, err, table.dumps)
	}
}

func TestCleanStaleIPv6UsesInet6(t *testing.T) {
	table := &fakeTable{}
	targets := []Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("fd00::10"), Port: 53}}
	if _, err := newTestCleaner(table).CleanStale(v1.IPv6Protocol, targets); err != nil {
		t.Fatalf("CleanStale: %v", err)
	}
	if !slices.Equal(table.families, []netlink.InetFamily{unix.AF_INET6}) {
		t.Errorf("families dumped = %v, want [AF_INET6]", table.families)
	}
}

func TestCleanStaleRetriesInterruptedDump(t *testing.T) {
	table := &fakeTable{interrupts: 2, flows: []*netlink.ConntrackFlow{
		testFlow(unix.IPPROTO_UDP, "10.0.0.1:1000", "10.96.0.10:53", "10.244.9.9:53"),
		testFlow(unix.IPPROTO_UDP, "10.0.0.2:1000", "10.96.0.10:53", "10.244.9.9:53"),
	}}
	targets := []Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.10"), Port: 53}}
	deleted, err := newTestCleaner(table).CleanStale(v1.IPv4Protocol, targets)
	if err != nil || deleted != 2 || len(table.flows) != 0 || table.dumps != 3 {
		t.Errorf("CleanStale = %d, %v after %d dumps, %d left; want 2, nil, 3 dumps, 0 left",
			deleted, err, table.dumps, len(table.flows))
	}
}

func TestCleanStaleGivesUpAfterRepeatedInterrupts(t *testing.T) {
	table := &fakeTable{interrupts: 100}
	targets := []Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.10"), Port: 53}}
	_, err := newTestCleaner(table).CleanStale(v1.IPv4Protocol, targets)
	if !errors.Is(err, netlink.ErrDumpInterrupted) || table.dumps != maxCleanAttempts {
		t.Errorf("err=%v after %d dumps; want ErrDumpInterrupted after %d", err, table.dumps, maxCleanAttempts)
	}
}

func TestCleanStaleErrors(t *testing.T) {
	table := &fakeTable{failWith: unix.EPERM}
	targets := []Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.10"), Port: 53}}
	if _, err := newTestCleaner(table).CleanStale(v1.IPv4Protocol, targets); !errors.Is(err, unix.EPERM) || table.dumps != 1 {
		t.Errorf("err=%v after %d dumps; want wrapped EPERM, no retry", err, table.dumps)
	}
	if _, err := newTestCleaner(table).CleanStale("IPv5", targets); err == nil {
		t.Error("unknown family: want an error")
	}
}

func TestNewCleanerTransports(t *testing.T) {
	if c := NewCleaner(nil); !c.decodesSCTP {
		t.Error("NewCleaner(nil) must use the SCTP-decoding ctnetlink requests")
	} else if _, ok := c.table.(*ctnetlinkTable); !ok {
		t.Errorf("NewCleaner(nil) table is %T, want *ctnetlinkTable", c.table)
	}
	handle := &netlink.Handle{}
	if c := NewCleaner(handle); c.decodesSCTP || c.table != flowDeleter(handle) {
		t.Error("NewCleaner(h) must work through h and know it cannot decode SCTP ports")
	}
}

func TestCleanStaleSkipsSCTPWithoutPortDecoding(t *testing.T) {
	table := &fakeTable{flows: []*netlink.ConntrackFlow{
		testFlow(unix.IPPROTO_SCTP, "10.0.0.1:1000", "10.96.0.30:7000", "10.244.9.9:7000"),
	}}
	targets := []Target{{Protocol: v1.ProtocolSCTP, VIPs: addrs("10.96.0.30"), Port: 7000}}
	cleaner := &Cleaner{table: table}
	if deleted, err := cleaner.CleanStale(v1.IPv4Protocol, targets); err != nil || deleted != 0 || table.dumps != 0 {
		t.Errorf("CleanStale = %d, %v after %d dumps; want SCTP skipped without a dump", deleted, err, table.dumps)
	}
}

// newTestCleaner wraps an in-memory table that reports SCTP ports.
func newTestCleaner(table flowDeleter) *Cleaner {
	return &Cleaner{table: table, decodesSCTP: true}
}
