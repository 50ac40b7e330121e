package nftables

import (
	"net/netip"
	"slices"
)

// rangeBounds returns the first and last address of each range, sorted, leaving out ranges
// inside other ranges (the kernel's interval sets reject overlapping elements).
func rangeBounds(ranges []netip.Prefix) [][2]string {
	ranges = slices.Clone(ranges)
	slices.SortFunc(ranges, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var kept []netip.Prefix
	var out [][2]string
	for _, p := range ranges {
		if slices.ContainsFunc(kept, func(k netip.Prefix) bool { return k.Bits() <= p.Bits() && k.Contains(p.Addr()) }) {
			continue
		}
		kept = append(kept, p)
		first, last := prefixRange(p)
		out = append(out, [2]string{string(first.AsSlice()), string(last.AsSlice())})
	}
	return out
}
