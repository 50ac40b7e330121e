package userspace

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

var bothFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}

// golden elements: the ones testdata/capture.nft holds.
var (
	goldenV4 = []captureElem{
		{captureKey{kind: elemService, addr: netip.MustParseAddr("10.96.0.10"), proto: v1.ProtocolTCP, port: 80}, 40001},
		{captureKey{kind: elemNodePort, proto: v1.ProtocolUDP, port: 30053}, 40002},
		{captureKey{kind: elemListener, proto: v1.ProtocolTCP, port: 40001}, 0},
	}
	goldenV6 = []captureElem{
		{captureKey{kind: elemService, addr: netip.MustParseAddr("fd00:10:96::10"), proto: v1.ProtocolUDP, port: 53}, 40003},
		{captureKey{kind: elemNodePort, proto: v1.ProtocolTCP, port: 30080}, 40004},
		{captureKey{kind: elemListener, proto: v1.ProtocolUDP, port: 40003}, 0},
	}
)

// TestCaptureTablesMatchNft proves the netlink encoding: the tables nft builds from
// testdata/capture.nft and the ones nftCapture programs list identically.
func TestCaptureTablesMatchNft(t *testing.T) {
	fromFile := newTestNS(t, "nftfile")
	fromFile.mustExec(t, "nft", "-f", "testdata/capture.nft")
	fromGo := newTestNS(t, "nftgo")
	c := &nftCapture{netNSFd: fromGo.fd(), families: bothFamilies}
	err := c.Apply([]familyChange{
		{family: v1.IPv4Protocol, full: true, add: goldenV4, nodePortAddresses: []netip.Prefix{
			netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("127.0.0.1/32")}},
		{family: v1.IPv6Protocol, full: true, add: goldenV6},
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for _, family := range []string{"ip", "ip6"} {
		want := fromFile.mustExec(t, "nft", "list", "table", family, TableName)
		got := fromGo.mustExec(t, "nft", "list", "table", family, TableName)
		if got != want {
			t.Errorf("%s table programmed over netlink differs from nft's:\n--- nft\n%s\n--- netlink\n%s", family, want, got)
		}
	}
}

func TestCaptureUpdatesElementsAndRebuilds(t *testing.T) {
	ns := newTestNS(t, "nftupd")
	c := &nftCapture{netNSFd: ns.fd(), families: bothFamilies}
	if err := c.Apply([]familyChange{{family: v1.IPv4Protocol, full: true, add: goldenV4}}); err != nil {
		t.Fatalf("full Apply: %v", err)
	}
	moved := captureElem{goldenV4[0].captureKey, 40009}
	extra := captureElem{captureKey{kind: elemService, addr: netip.MustParseAddr("203.0.113.7"), proto: v1.ProtocolUDP, port: 53}, 40010}
	err := c.Apply([]familyChange{{family: v1.IPv4Protocol, del: goldenV4[:1], add: []captureElem{moved, extra}}})
	if err != nil {
		t.Fatalf("partial Apply: %v", err)
	}
	listing := ns.mustExec(t, "nft", "list", "map", "ip", TableName, mapServiceIPs)
	for _, want := range []string{"10.96.0.10 . tcp . 80 : 40009", "203.0.113.7 . udp . 53 : 40010"} {
		if !strings.Contains(listing, want) {
			t.Errorf("service-ips lacks %q:\n%s", want, listing)
		}
	}
	if strings.Contains(listing, "40001") {
		t.Errorf("service-ips still holds the deleted element:\n%s", listing)
	}

	if err := c.Apply([]familyChange{{family: v1.IPv4Protocol, full: true, add: []captureElem{extra}}}); err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	listing = ns.mustExec(t, "nft", "list", "table", "ip", TableName)
	if strings.Contains(listing, "40009") || !strings.Contains(listing, "40010") || strings.Count(listing, "redirect") != 8 {
		t.Errorf("a full Apply did not replace the table:\n%s", listing)
	}

	if err := c.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if out, err := ns.exec(t, "nft", "list", "table", "ip", TableName); err == nil {
		t.Errorf("the table survived Remove:\n%s", out)
	}
	if err := Cleanup(ns.fd()); err != nil {
		t.Errorf("Cleanup without tables: %v", err)
	}
}
