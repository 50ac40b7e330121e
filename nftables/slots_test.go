package nftables

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nodeproxy/nodeproxy/endpoints"
)

func TestAssignSlots(t *testing.T) {
	ap := func(n int) netip.AddrPort { return netip.MustParseAddrPort(fmt.Sprintf("10.0.0.%d:80", n)) }
	eps := func(ns ...int) []endpoints.Endpoint {
		var out []endpoints.Endpoint
		for _, n := range ns {
			a := ap(n)
			out = append(out, endpoints.Endpoint{IP: a.Addr(), Port: int32(a.Port())})
		}
		return out
	}
	aps := func(ns ...int) []netip.AddrPort {
		var out []netip.AddrPort
		for _, n := range ns {
			out = append(out, ap(n))
		}
		return out
	}
	tests := []struct {
		name string
		prev []netip.AddrPort
		cur  []endpoints.Endpoint
		want []netip.AddrPort
	}{
		{"first assignment keeps the given order", nil, eps(1, 2, 3), aps(1, 2, 3)},
		{"unchanged", aps(3, 1, 2), eps(1, 2, 3), aps(3, 1, 2)},
		{"removal: the last slot's endpoint fills the hole", aps(1, 2, 3, 4), eps(1, 3, 4), aps(1, 4, 3)},
		{"replacement takes the freed slot", aps(1, 2, 3), eps(1, 3, 5), aps(1, 5, 3)},
		{"addition appends", aps(2, 1), eps(1, 2, 3), aps(2, 1, 3)},
		{"duplicates count once", aps(1), eps(2, 1, 2), aps(1, 2)},
		{"everything removed", aps(1, 2), nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := assignSlots(tc.prev, tc.cur)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("assignSlots(%v, %v) = %v, want %v", tc.prev, tc.cur, got, tc.want)
			}
		})
	}
}
