package pods

import (
	"fmt"
	"net/netip"
	"sync"
)

// allocator hands out pod addresses from the node's pod CIDRs, one per CIDR. The first
// address of each CIDR is the bridge's; IPv4 network and broadcast addresses are skipped.
// It continues after the last address handed out, so a freed address is not reused at once.
type allocator struct {
	mu     sync.Mutex
	ranges []*addrRange
}

type addrRange struct {
	prefix netip.Prefix
	next   netip.Addr
	used   map[netip.Addr]bool
}

// maxScan bounds the search for a free address in a large (IPv6) range.
const maxScan = 1 << 16

func newAllocator(cidrs []netip.Prefix) *allocator {
	a := &allocator{}
	for _, c := range cidrs {
		c = c.Masked()
		a.ranges = append(a.ranges, &addrRange{prefix: c, next: first(c), used: map[netip.Addr]bool{}})
	}
	return a
}

// Gateway is the bridge address of cidr: its first address, with the CIDR's length.
func Gateway(cidr netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(cidr.Masked().Addr().Next(), cidr.Bits())
}

func first(c netip.Prefix) netip.Addr { return c.Addr().Next().Next() }

func (r *addrRange) usable(a netip.Addr) bool {
	if !r.prefix.Contains(a) || a.Compare(first(r.prefix)) < 0 {
		return false
	}
	return !a.Is4() || r.prefix.Bits() >= 31 || r.prefix.Contains(a.Next())
}

// allocate returns one address per range, preferring free ones among preferred (the
// pod's previous addresses).
func (a *allocator) allocate(preferred []string) ([]netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []netip.Prefix
	for _, r := range a.ranges {
		addr, ok := r.pick(preferred)
		if !ok {
			for _, got := range out {
				a.releaseLocked(got)
			}
			return nil, fmt.Errorf("no free address in %s", r.prefix)
		}
		r.used[addr] = true
		out = append(out, netip.PrefixFrom(addr, r.prefix.Bits()))
	}
	return out, nil
}

func (r *addrRange) pick(preferred []string) (netip.Addr, bool) {
	for _, s := range preferred {
		if p, err := netip.ParseAddr(s); err == nil && r.usable(p) && !r.used[p] {
			return p, true
		}
	}
	a := r.next
	for range maxScan {
		if !r.usable(a) {
			if a = first(r.prefix); !r.usable(a) {
				return netip.Addr{}, false
			}
		}
		if !r.used[a] {
			r.next = a.Next()
			return a, true
		}
		a = a.Next()
	}
	return netip.Addr{}, false
}

// release frees addrs.
func (a *allocator) release(addrs []netip.Prefix) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range addrs {
		a.releaseLocked(p)
	}
}

func (a *allocator) releaseLocked(p netip.Prefix) {
	for _, r := range a.ranges {
		delete(r.used, p.Addr())
	}
}
