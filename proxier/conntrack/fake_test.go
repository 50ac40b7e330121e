package conntrack

import (
	"errors"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestFakeRecordsCalls(t *testing.T) {
	fake := NewFake()
	var iface Interface = fake
	targets := []Target{{Protocol: v1.ProtocolUDP, VIPs: addrs("10.96.0.10"), Port: 53, Serving: addrPorts("10.244.1.5:53")}}
	if n, err := iface.CleanStale(v1.IPv4Protocol, targets); n != 0 || err != nil {
		t.Fatalf("default result = %d, %v; want 0, nil", n, err)
	}
	// Changing the caller's slices must not change the record.
	targets[0].VIPs[0] = netip.MustParseAddr("10.96.0.99")
	targets[0].Serving[0] = netip.MustParseAddrPort("10.244.9.9:53")

	wantErr := errors.New("boom")
	fake.SetResult(3, wantErr)
	if n, err := iface.CleanStale(v1.IPv6Protocol, nil); n != 3 || !errors.Is(err, wantErr) {
		t.Errorf("configured result = %d, %v; want 3, boom", n, err)
	}

	calls := fake.Calls()
	if len(calls) != 2 || calls[0].Family != v1.IPv4Protocol || calls[1].Family != v1.IPv6Protocol {
		t.Fatalf("calls = %+v, want an IPv4 then an IPv6 call", calls)
	}
	got := calls[0].Targets[0]
	if got.VIPs[0] != netip.MustParseAddr("10.96.0.10") || got.Serving[0] != netip.MustParseAddrPort("10.244.1.5:53") {
		t.Errorf("recorded target changed with the caller's slices: %+v", got)
	}
	fake.Reset()
	if len(fake.Calls()) != 0 {
		t.Error("Reset did not forget the calls")
	}
}
