package pods

import (
	"net/netip"
	"testing"
)

func TestSandboxNames(t *testing.T) {
	if got := SandboxName("n1", "0A1B2C3D-4e5f-0000"); got != "n1-0a1b2c3d" {
		t.Errorf("UID prefix: got %q", got)
	}
	hashed := SandboxName("n1", "not-hex-uid")
	if !IsSandboxOf("n1", hashed) || hashed == SandboxName("n1", "not-hex-uid2") {
		t.Errorf("hashed name %q not recognised or not distinct", hashed)
	}
	for _, tc := range []struct {
		prefix, name string
		want         bool
	}{
		{"n1", "n1-0a1b2c3d", true},
		{"n1", "n1-a-0a1b2c3d", false}, // node "n1-a"'s sandbox
		{"n1-a", "n1-a-0a1b2c3d", true},
		{"n1", "n1-0a1b2c3", false},
		{"n1", "n1-0a1b2c3g", false},
		{"n1", "n1", false},
	} {
		if got := IsSandboxOf(tc.prefix, tc.name); got != tc.want {
			t.Errorf("IsSandboxOf(%q, %q) = %v, want %v", tc.prefix, tc.name, got, tc.want)
		}
	}
}

func TestAllocator(t *testing.T) {
	a := newAllocator([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/29"), netip.MustParsePrefix("fd00::/120")})
	var got []string
	for range 5 {
		addrs, err := a.allocate(nil)
		if err != nil {
			t.Fatalf("allocation %d: %v", len(got)+1, err)
		}
		if len(addrs) != 2 || addrs[0].Bits() != 29 || addrs[1].Bits() != 120 {
			t.Fatalf("addresses %v, want one per family with the CIDR's length", addrs)
		}
		got = append(got, addrs[0].Addr().String())
	}
	// .0 is the network, .1 the bridge, .7 the broadcast address.
	want := []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("allocated %v, want %v", got, want)
		}
	}
	if _, err := a.allocate(nil); err == nil {
		t.Fatal("allocated from a full range")
	}
	a.release([]netip.Prefix{netip.MustParsePrefix("10.0.0.4/29"), netip.MustParsePrefix("fd00::4/120")})
	a.release([]netip.Prefix{netip.MustParsePrefix("10.0.0.3/29"), netip.MustParsePrefix("fd00::3/120")})
	addrs, err := a.allocate([]string{"10.0.0.3", "fd00::77"})
	if err != nil || addrs[0].Addr().String() != "10.0.0.3" || addrs[1].Addr().String() != "fd00::77" {
		t.Errorf("preferred addresses: got %v %v, want 10.0.0.3 and fd00::77", addrs, err)
	}
	if addrs, _ := a.allocate(nil); addrs[0].Addr().String() != "10.0.0.4" {
		t.Errorf("got %v, want the remaining free 10.0.0.4", addrs)
	}
	if gw := Gateway(netip.MustParsePrefix("10.0.0.0/29")); gw.String() != "10.0.0.1/29" {
		t.Errorf("gateway %s", gw)
	}
}
