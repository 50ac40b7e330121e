package nftables

import (
	"net/netip"
	"reflect"
	"slices"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// The endpoint lists a service port's frontends use, each with its own stable slot order.
const (
	listInternal = iota // ClusterIP traffic (Cluster or Local endpoints per internalTrafficPolicy)
	listCluster         // external frontends: all traffic with eTP Cluster, pod/host traffic with eTP Local
	listLocal           // external frontends with eTP Local: traffic from outside
	numLists
)

const (
	// defaultAffinitySeconds is the ClientIP affinity timeout when the Service gives none.
	defaultAffinitySeconds = 10800
	// commentMax is the longest element comment nft accepts.
	commentMax = 128
)

// setElem is one element a service port wants in a set or map.
type setElem struct {
	set string
	el  element
}

// Unit kinds: what a unit's key identifies.
const (
	// unitVIP is a ClusterIP, external IP or LoadBalancer IP with protocol and port: its
	// dispatch, endpoint, no-endpoint and firewall elements.
	unitVIP = "vip"
	// unitNodePort is a protocol and node port: its dispatch, endpoint and no-endpoint elements.
	unitNodePort = "nodeport"
	// setClusterIPs and setHairpin units are single elements shared by several ports.
)

// unit is a group of elements that belong together and have one owner: everything about one
// frontend, or one shared element. When two ports claim the same unit (two Services with one
// external IP and port), one of them gets the whole unit, never a mix of both.
type unit struct {
	kind  string
	key   string
	elems []setElem
}

// ref returns the unit's identity.
func (u *unit) ref() unitRef { return unitRef{kind: u.kind, key: u.key} }

// portState is what one service port puts into its family's table, kept as the inputs its
// elements are generated from rather than as the elements (a tenth of the memory at 10
// endpoints): the port, the slot order of each endpoint list (which the next build keeps
// stable), whether it has any usable endpoint and its local endpoints (hairpin). It also keeps
// the units the elements form and the dynamic chains they lead to (with their dependencies).
// A portState is never modified once built.
type portState struct {
	sp      *proxier.ServicePort
	hasAny  bool
	slots   [numLists][]netip.AddrPort
	hairpin []netip.AddrPort
	units   []unitRef
	chains  []chainID
	// elementCount is the number of elements the units hold.
	elementCount int32
}

// buildPort computes the desired state of one service port: a pure function of the port, its
// endpoints, the node (for topology) and the port's previous state (for slot stability).
// When counts is not nil, the port's elements are added to it by set.
func buildPort(fc *familyConfig, sp *proxier.ServicePort, eps []endpoints.Endpoint, node endpoints.Node, prev *portState, counts setCounts) *portState {
	choice := endpoints.Choose(usableEndpoints(fc.fam, eps), sp.Policy(), node)
	ps := &portState{sp: sp, hasAny: choice.HasAny}
	var prevSlots [numLists][]netip.AddrPort
	if prev != nil {
		prevSlots = prev.slots
	}
	internal := choice.Cluster
	if sp.InternalPolicyLocal {
		internal = choice.Local
	}
	ps.slots[listInternal] = assignSlots(prevSlots[listInternal], internal)
	if sp.ExternallyAccessible() {
		ps.slots[listCluster] = assignSlots(prevSlots[listCluster], choice.Cluster)
		if sp.ExternalPolicyLocal {
			ps.slots[listLocal] = assignSlots(prevSlots[listLocal], choice.Local)
		}
	}
	for _, ep := range choice.AllReachable {
		if ap := ep.AddrPort(); ep.Local && !slices.Contains(ps.hairpin, ap) {
			ps.hairpin = append(ps.hairpin, ap)
		}
	}
	b := newPortBuilder(fc, ps, false)
	b.counts = counts
	b.build()
	ps.units = make([]unitRef, len(b.units))
	for i := range b.units {
		ps.units[i] = b.units[i].ref()
	}
	ps.chains = b.chains
	ps.elementCount = int32(b.count)
	return ps
}

// elements generates the port's units with their elements, in the order of ps.units.
func (ps *portState) elements(fc *familyConfig) []unit {
	b := newPortBuilder(fc, ps, true)
	b.build()
	return b.units
}

// sameInputs reports whether two states of a port generate the same elements and chains.
func sameInputs(a, b *portState) bool {
	if a.sp != b.sp && !reflect.DeepEqual(a.sp, b.sp) {
		return false
	}
	if a.hasAny != b.hasAny || !slices.Equal(a.hairpin, b.hairpin) {
		return false
	}
	for l := range numLists {
		if !slices.Equal(a.slots[l], b.slots[l]) {
			return false
		}
	}
	return true
}

// usableEndpoints drops endpoints of another family or without a valid port.
func usableEndpoints(fam *family, eps []endpoints.Endpoint) []endpoints.Endpoint {
	ok := func(ep endpoints.Endpoint) bool { return fam.contains(ep.IP) && ep.Port > 0 && ep.Port <= 65535 }
	for i, ep := range eps {
		if !ok(ep) {
			out := append([]endpoints.Endpoint(nil), eps[:i]...)
			for _, ep := range eps[i+1:] {
				if ok(ep) {
					out = append(out, ep)
				}
			}
			return out
		}
	}
	return eps
}

// portBuilder generates one port's units from its state: with elems false only the units'
// identities and the chains (what buildPort keeps), with elems true the elements too.
type portBuilder struct {
	fc      *familyConfig
	ps      *portState
	sp      *proxier.ServicePort
	elems   bool
	proto   uint8
	timeout int32
	comment string
	units   []unit
	chains  []chainID
	// count is the number of elements generated (or, with elems false, that would be).
	count int
	// counts, when not nil, counts the elements by set.
	counts setCounts
	// scratch is reused to encode keys (each key then costs one allocation, its string).
	scratch keyBuf
}

func newPortBuilder(fc *familyConfig, ps *portState, elems bool) *portBuilder {
	sp := ps.sp
	b := &portBuilder{fc: fc, ps: ps, sp: sp, elems: elems, proto: protoNumber(sp.Protocol), scratch: make(keyBuf, 0, 64)}
	if elems {
		b.comment = truncate(sp.Name.String(), commentMax)
	}
	if sp.ClientIPAffinity {
		b.timeout = sp.StickyMaxAgeSeconds
		if b.timeout <= 0 {
			b.timeout = defaultAffinitySeconds
		}
	}
	return b
}

// build generates the units: the ClusterIP, each external IP and LoadBalancer IP, the
// NodePort, and the hairpin elements of local endpoints.
func (b *portBuilder) build() {
	sp, ps := b.sp, b.ps
	vips := b.externalVIPs()
	b.units = make([]unit, 0, 2+len(vips)+1+len(ps.hairpin))
	b.clusterIP()
	allowed := b.firewallRanges()
	for _, vip := range vips {
		key := b.vipKey(vip)
		b.beginUnit(unitVIP, key, 3+len(allowed)+len(ps.slots[listCluster])+len(ps.slots[listLocal]))
		b.external(kindVIP, key)
		if len(allowed) > 0 && slices.Contains(sp.LoadBalancerVIPs, vip) {
			b.add(setFirewallIPs, element{key: key, comment: b.comment})
			for _, rng := range allowed {
				b.add(setFirewallAllow, element{key: key + rng[0], keyEnd: key + rng[1]})
			}
		}
	}
	if sp.NodePort > 0 && sp.NodePort <= 65535 {
		key := b.done(b.scratch[:0].proto(b.proto).port(uint16(sp.NodePort)))
		b.beginUnit(unitNodePort, key, 3+len(ps.slots[listCluster])+len(ps.slots[listLocal]))
		b.external(kindNodePort, key)
	}
	b.hairpin()
}

// done returns the key built in the scratch buffer as a string and keeps the buffer.
func (b *portBuilder) done(k keyBuf) string {
	b.scratch = k[:0]
	return string(k)
}

// vipKey encodes `ip . protocol . port` for the port.
func (b *portBuilder) vipKey(ip netip.Addr) string {
	return b.done(b.scratch[:0].addr(ip).proto(b.proto).port(uint16(b.sp.Port)))
}

// beginUnit starts a unit of about size elements: the next elements belong to it.
func (b *portBuilder) beginUnit(kind, key string, size int) {
	u := unit{kind: kind, key: key}
	if b.elems {
		u.elems = make([]setElem, 0, size)
	}
	b.units = append(b.units, u)
}

// add adds an element to the current unit (nothing when only identities are generated).
func (b *portBuilder) add(set string, el element) {
	b.count++
	if b.counts != nil {
		b.counts[set]++
	}
	if !b.elems {
		return
	}
	u := &b.units[len(b.units)-1]
	u.elems = append(u.elems, setElem{set: set, el: el})
}

// useChain records that the port's elements lead to c (and so to its dependencies), and
// returns c's name.
func (b *portBuilder) useChain(c chainID) string {
	for _, d := range c.withDeps(nil) {
		if !slices.Contains(b.chains, d) {
			b.chains = append(b.chains, d)
		}
	}
	return b.fc.chainName(c)
}

// slotElements maps each slot of a frontend to its endpoint.
func (b *portBuilder) slotElements(kind frontendKind, frontend string, slots []netip.AddrPort) {
	set := kind.endpointsMap()
	if !b.elems {
		b.count += len(slots)
		if b.counts != nil {
			b.counts[set] += len(slots)
		}
		return
	}
	for i, ap := range slots {
		key := b.done(append(b.scratch[:0], frontend...).slot(uint32(i)))
		b.add(set, element{key: key, value: b.done(b.scratch[:0].addr(ap.Addr()).port(ap.Port()))})
	}
}

// noEndpointVerdict is what the filter chains do with traffic that found no endpoint: reject
// when the service has no usable endpoint anywhere, drop when only a Local policy has none.
func (b *portBuilder) noEndpointVerdict() verdict {
	if !b.ps.hasAny {
		return goTo(chainReject)
	}
	return verdictDropV
}

// clusterIP programs the ClusterIP frontend.
func (b *portBuilder) clusterIP() {
	sp := b.sp
	cip := b.done(b.scratch[:0].addr(sp.ClusterIP))
	b.beginUnit(setClusterIPs, cip, 1)
	b.add(setClusterIPs, element{key: cip})
	key := b.vipKey(sp.ClusterIP)
	b.beginUnit(unitVIP, key, 1+len(b.ps.slots[listInternal]))
	slots := b.ps.slots[listInternal]
	if len(slots) == 0 {
		b.add(mapNoEndpointServices, element{key: key, verd: b.noEndpointVerdict(), comment: b.comment})
		return
	}
	target := b.useChain(dnatTarget(kindVIP, len(slots), b.timeout))
	b.add(mapServiceIPs, element{key: key, verd: goTo(target), comment: b.comment})
	b.slotElements(kindVIP, key, slots)
}

// externalVIPs returns the port's external IPs and LoadBalancer IPs, without duplicates and
// without the ClusterIP.
func (b *portBuilder) externalVIPs() []netip.Addr {
	seen := map[netip.Addr]bool{b.sp.ClusterIP: true}
	var out []netip.Addr
	for _, list := range [][]netip.Addr{b.sp.ExternalIPs, b.sp.LoadBalancerVIPs} {
		for _, ip := range list {
			if b.fc.fam.contains(ip) && !seen[ip] {
				seen[ip] = true
				out = append(out, ip)
			}
		}
	}
	return out
}

// external programs one external frontend (an external IP, a LoadBalancer IP or the NodePort)
// of kind kindVIP or kindNodePort, keyed by frontend.
func (b *portBuilder) external(kind frontendKind, frontend string) {
	dispatch, local, noEndpoints := mapServiceIPs, mapServiceIPsLocal, mapNoEndpointServices
	localKind := kindVIPLocal
	if kind.isNodePort() {
		dispatch, local, noEndpoints = mapServiceNodePorts, mapServiceNodePortsLocal, mapNoEndpointNodePorts
		localKind = kindNodePortLocal
	}
	cluster, locals := b.ps.slots[listCluster], b.ps.slots[listLocal]
	etpLocal := b.sp.ExternalPolicyLocal
	if b.ps.hasAny && len(cluster) > 0 {
		wrapper := chainID{role: roleExternal, kind: kind, n: len(cluster), timeout: b.timeout}
		if etpLocal {
			wrapper.role = roleExternalLocal
		}
		b.add(dispatch, element{key: frontend, verd: goTo(b.useChain(wrapper)), comment: b.comment})
		b.slotElements(kind, frontend, cluster)
		if etpLocal && len(locals) > 0 {
			target := b.useChain(dnatTarget(localKind, len(locals), b.timeout))
			b.add(local, element{key: frontend, verd: goTo(target), comment: b.comment})
			b.slotElements(localKind, frontend, locals)
		}
	}
	if !b.ps.hasAny || (etpLocal && len(locals) == 0) {
		b.add(noEndpoints, element{key: frontend, verd: b.noEndpointVerdict(), comment: b.comment})
	}
}

// firewallRanges returns the sources allowed to reach the LoadBalancer IPs, as encoded
// [first, last] address pairs: loadBalancerSourceRanges, plus the LoadBalancer IPs themselves
// when a range holds a node IP (as upstream). None: no firewall.
func (b *portBuilder) firewallRanges() [][2]string {
	var ranges []netip.Prefix
	for _, p := range b.sp.LoadBalancerSourceRanges {
		if b.fc.fam.contains(p.Addr()) {
			ranges = append(ranges, p.Masked())
		}
	}
	var vips []netip.Addr
	for _, ip := range b.sp.LoadBalancerVIPs {
		if b.fc.fam.contains(ip) {
			vips = append(vips, ip)
		}
	}
	if len(ranges) == 0 || len(vips) == 0 {
		return nil
	}
	allowed := ranges
	if b.rangesHoldNodeIP(ranges) {
		for _, ip := range vips {
			allowed = append(allowed, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	return rangeBounds(allowed)
}

func (b *portBuilder) rangesHoldNodeIP(ranges []netip.Prefix) bool {
	for _, p := range ranges {
		for _, ip := range b.fc.nodeIPs {
			if p.Contains(ip) {
				return true
			}
		}
	}
	return false
}

// hairpin lists the local endpoints, whose traffic to their own service is masqueraded.
func (b *portBuilder) hairpin() {
	for _, ap := range b.ps.hairpin {
		key := b.done(b.scratch[:0].addr(ap.Addr()).addr(ap.Addr()).proto(b.proto).port(ap.Port()))
		b.beginUnit(setHairpin, key, 1)
		b.add(setHairpin, element{key: key})
	}
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
