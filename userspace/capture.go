package userspace

import (
	"cmp"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// elemKind says which map or set of the capture table an element belongs to.
type elemKind uint8

const (
	// elemService is a service-ips element: daddr . l4proto . dport : listener port.
	elemService elemKind = iota
	// elemNodePort is a service-nodeports element: l4proto . dport : listener port.
	elemNodePort
	// elemListener is a listener-ports element: l4proto . listener port (input-guard).
	elemListener
)

// captureKey is the key of one capture element.
type captureKey struct {
	kind  elemKind
	addr  netip.Addr // elemService only
	proto v1.Protocol
	port  uint16
}

// captureElem is one element as it goes to the kernel.
type captureElem struct {
	captureKey
	// target is the listener port traffic is redirected to (0 for elemListener).
	target uint16
}

// familyChange is what one sync changes in one family's capture table.
type familyChange struct {
	family v1.IPFamily
	// full recreates the table with add as its whole content (del is empty).
	full bool
	// nodePortAddresses restrict NodePorts (full only; empty: every local address).
	nodePortAddresses []netip.Prefix
	del, add          []captureElem
}

// capturer is the kernel side of the capture: the nftables tables that redirect service
// traffic to the listeners. The real one is nftCapture; tests use a fake.
type capturer interface {
	// Apply commits the changes of every family in one transaction.
	Apply(changes []familyChange) error
	// Remove deletes the capture tables of every family (absent tables are fine).
	Remove() error
}

// claim is a service port's wish for a capture key.
type claim struct {
	owner  portKey
	target uint16
}

// captureTable is the in-memory model of one family's capture table: which service ports
// claim which keys (the first claim wins: two Services with the same externalIP and port must
// not fail the whole transaction), and what was last committed to the kernel.
type captureTable struct {
	family  v1.IPFamily
	claims  map[captureKey][]claim
	kernel  map[captureKey]uint16
	touched map[captureKey]struct{}
}

// newCaptureTable returns an empty model for family.
func newCaptureTable(family v1.IPFamily) *captureTable {
	return &captureTable{
		family:  family,
		claims:  map[captureKey][]claim{},
		kernel:  map[captureKey]uint16{},
		touched: map[captureKey]struct{}{},
	}
}

// replace swaps owner's claims old for new (either may be nil). A claim keeps its place in
// line when only its target changes.
func (t *captureTable) replace(owner portKey, old, new map[captureKey]uint16) {
	isOwner := func(c claim) bool { return c.owner == owner }
	for key := range old {
		if _, keep := new[key]; keep {
			continue
		}
		if list := slices.DeleteFunc(t.claims[key], isOwner); len(list) > 0 {
			t.claims[key] = list
		} else {
			delete(t.claims, key)
		}
		t.touched[key] = struct{}{}
	}
	for key, target := range new {
		list := t.claims[key]
		if i := slices.IndexFunc(list, isOwner); i >= 0 {
			if list[i].target != target {
				list[i].target = target
				t.touched[key] = struct{}{}
			}
			continue
		}
		if len(list) > 0 {
			klog.InfoS("Capture key already claimed by another service port; it wins until it goes",
				"family", t.family, "address", key.addr, "protocol", key.proto, "port", key.port,
				"servicePort", owner.name, "winner", list[0].owner.name)
		}
		t.claims[key] = append(list, claim{owner: owner, target: target})
		t.touched[key] = struct{}{}
	}
}

// pending returns the kernel change that makes the table match the claims: only the touched
// keys, or everything when full.
func (t *captureTable) pending(full bool, nodePortAddresses []netip.Prefix) familyChange {
	ch := familyChange{family: t.family, full: full}
	if full {
		ch.nodePortAddresses = nodePortAddresses
		for key, list := range t.claims {
			ch.add = append(ch.add, captureElem{captureKey: key, target: list[0].target})
		}
		sortElems(ch.add)
		return ch
	}
	for key := range t.touched {
		want, wanted := uint16(0), false
		if list := t.claims[key]; len(list) > 0 {
			want, wanted = list[0].target, true
		}
		have, had := t.kernel[key]
		if had == wanted && have == want {
			continue
		}
		if had {
			ch.del = append(ch.del, captureElem{captureKey: key, target: have})
		}
		if wanted {
			ch.add = append(ch.add, captureElem{captureKey: key, target: want})
		}
	}
	sortElems(ch.del)
	sortElems(ch.add)
	return ch
}

// committed records that ch reached the kernel.
func (t *captureTable) committed(ch familyChange) {
	if ch.full {
		clear(t.kernel)
	}
	for _, e := range ch.del {
		delete(t.kernel, e.captureKey)
	}
	for _, e := range ch.add {
		t.kernel[e.captureKey] = e.target
	}
	clear(t.touched)
}

// sortElems orders elements by kind, address, protocol and port, for stable batches and tests.
func sortElems(elems []captureElem) {
	slices.SortFunc(elems, func(a, b captureElem) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), a.addr.Compare(b.addr),
			cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port))
	})
}

// captureKeysOf returns the capture elements of a service port whose ClusterIP traffic goes
// to internalPort and whose NodePort, externalIP and LB IP traffic goes to externalPort.
func captureKeysOf(sp *proxier.ServicePort, internalPort, externalPort uint16) map[captureKey]uint16 {
	keys := map[captureKey]uint16{}
	port := uint16(sp.Port)
	keys[captureKey{kind: elemService, addr: sp.ClusterIP, proto: sp.Protocol, port: port}] = internalPort
	for _, ip := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerVIPs) {
		keys[captureKey{kind: elemService, addr: ip, proto: sp.Protocol, port: port}] = externalPort
	}
	if sp.NodePort > 0 {
		keys[captureKey{kind: elemNodePort, proto: sp.Protocol, port: uint16(sp.NodePort)}] = externalPort
	}
	keys[captureKey{kind: elemListener, proto: sp.Protocol, port: internalPort}] = 0
	keys[captureKey{kind: elemListener, proto: sp.Protocol, port: externalPort}] = 0
	return keys
}
