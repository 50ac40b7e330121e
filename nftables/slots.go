package nftables

import (
	"net/netip"
	"slices"

	"github.com/nodeproxy/nodeproxy/endpoints"
)

// assignSlots returns the endpoints of cur in slot order (slot i is the endpoint numgen value i
// selects). An endpoint keeps the slot it had in prev when that slot still exists, so an
// endpoint change rewrites only the slots that really change: a removed endpoint's slot is
// refilled by an added endpoint, or else by an endpoint whose slot no longer exists.
// Duplicates in cur count once; prev may be nil.
func assignSlots(prev []netip.AddrPort, cur []endpoints.Endpoint) []netip.AddrPort {
	if len(prev) == 0 {
		return distinctAddrPorts(cur)
	}
	wanted := make(map[netip.AddrPort]bool, len(cur))
	distinct := make([]netip.AddrPort, 0, len(cur))
	for _, ep := range cur {
		if ap := ep.AddrPort(); !wanted[ap] {
			wanted[ap] = true
			distinct = append(distinct, ap)
		}
	}
	n := len(distinct)
	if n == 0 {
		return nil
	}
	out := make([]netip.AddrPort, n)
	placed := make(map[netip.AddrPort]bool, n)
	for i, ap := range prev {
		if i < n && wanted[ap] && !placed[ap] {
			out[i] = ap
			placed[ap] = true
		}
	}
	// Every endpoint not kept at its old slot fills a free slot, in cur's order: the number of
	// rewritten slots is the same whichever order is used.
	var pending []netip.AddrPort
	for _, ap := range distinct {
		if !placed[ap] {
			pending = append(pending, ap)
		}
	}
	for i := range out {
		if !out[i].IsValid() {
			out[i] = pending[0]
			pending = pending[1:]
		}
	}
	return out
}

// distinctAddrPorts returns the endpoints' addresses in order, without duplicates.
func distinctAddrPorts(eps []endpoints.Endpoint) []netip.AddrPort {
	if len(eps) == 0 {
		return nil
	}
	out := make([]netip.AddrPort, 0, len(eps))
	for _, ep := range eps {
		ap := ep.AddrPort()
		if !slices.Contains(out, ap) { // lists are short; a map would cost more
			out = append(out, ap)
		}
	}
	return out
}
