package nftables

import (
	"fmt"
	"time"
)

// frontendKind says how a packet's frontend is identified in the endpoint maps and which
// class of endpoints a lookup returns. VIP frontends (ClusterIP, external IP, LoadBalancer IP)
// are keyed by `daddr . l4proto . dport`; NodePorts by `l4proto . dport`. The "local" kinds
// hold the node-local endpoints that externalTrafficPolicy: Local uses for outside traffic;
// the other kinds hold each frontend's default endpoints.
type frontendKind uint8

const (
	kindVIP frontendKind = iota
	kindVIPLocal
	kindNodePort
	kindNodePortLocal
)

// name is the kind as it appears in map, set and chain names.
func (k frontendKind) name() string {
	switch k {
	case kindVIPLocal:
		return "vip-local"
	case kindNodePort:
		return "nodeport"
	case kindNodePortLocal:
		return "nodeport-local"
	}
	return "vip"
}

// isNodePort reports whether the kind is keyed without the destination address.
func (k frontendKind) isNodePort() bool { return k == kindNodePort || k == kindNodePortLocal }

// endpointsMap is the map from `frontend . slot` to `endpoint address . port`.
func (k frontendKind) endpointsMap() string { return k.name() + "-endpoints" }

// affinitySet is the dynamic set recording `client . frontend . slot` for ClientIP affinity.
func (k frontendKind) affinitySet() string { return k.name() + "-affinity" }

// frontendKey is the part of a lookup key that identifies the frontend.
func (k frontendKind) frontendKey() []keyField {
	if k.isNodePort() {
		return []keyField{kL4Proto, kDport}
	}
	return []keyField{kDaddr, kL4Proto, kDport}
}

// localMap is the verdict map external-local chains of this kind consult for outside traffic.
func (k frontendKind) localMap() string {
	if k.isNodePort() {
		return mapServiceNodePortsLocal
	}
	return mapServiceIPsLocal
}

// chainRole is what a dynamic chain does.
type chainRole uint8

const (
	// roleDNAT picks one of n endpoints at random and DNATs to it.
	roleDNAT chainRole = iota + 1
	// roleSticky is roleDNAT with ClientIP affinity: a client recorded for a slot keeps it.
	roleSticky
	// roleStickySlot records the client for one slot and DNATs to that slot's endpoint.
	roleStickySlot
	// roleExternal marks for masquerading and goes to its target (externalTrafficPolicy Cluster).
	roleExternal
	// roleExternalLocal short-circuits pod and host traffic to its target and sends the rest to
	// the node-local endpoints (externalTrafficPolicy Local).
	roleExternalLocal
)

// chainID names a dynamic chain. Chains exist per endpoint count (and affinity timeout), never
// per Service, so their number is bounded by the distinct counts in use. A chain's rules are a
// pure function of its ID and the family configuration.
type chainID struct {
	role chainRole
	kind frontendKind
	// n is the endpoint count (the slot index for roleStickySlot).
	n int
	// timeout is the ClientIP affinity timeout in seconds (0: no affinity).
	timeout int32
}

// dnatTarget returns the chain that DNATs a frontend of kind to one of n endpoints.
func dnatTarget(kind frontendKind, n int, timeout int32) chainID {
	if timeout > 0 {
		return chainID{role: roleSticky, kind: kind, n: n, timeout: timeout}
	}
	return chainID{role: roleDNAT, kind: kind, n: n}
}

// target returns the DNAT chain an external or external-local chain leads to.
func (c chainID) target() chainID {
	return dnatTarget(c.kind, c.n, c.timeout)
}

// name is the chain's name in the table.
func (c chainID) name() string {
	switch c.role {
	case roleDNAT:
		return fmt.Sprintf("dnat-%s-%d", c.kind.name(), c.n)
	case roleSticky:
		return fmt.Sprintf("sticky-%s-%ds-%d", c.kind.name(), c.timeout, c.n)
	case roleStickySlot:
		return fmt.Sprintf("sticky-%s-%ds-slot-%d", c.kind.name(), c.timeout, c.n)
	case roleExternal:
		return "external-" + c.target().name()
	case roleExternalLocal:
		return "external-local-" + c.target().name()
	}
	return fmt.Sprintf("invalid-%d", c.role)
}

// level orders creation (ascending) and deletion (descending): a chain only refers to chains
// of a lower level.
func (c chainID) level() int {
	switch c.role {
	case roleDNAT, roleStickySlot:
		return 0
	case roleSticky:
		return 1
	}
	return 2
}

// deps returns the chains c refers to.
func (c chainID) deps() []chainID {
	switch c.role {
	case roleSticky:
		out := make([]chainID, c.n)
		for i := range out {
			out[i] = chainID{role: roleStickySlot, kind: c.kind, n: i, timeout: c.timeout}
		}
		return out
	case roleExternal, roleExternalLocal:
		return []chainID{c.target()}
	}
	return nil
}

// withDeps appends c and every chain it refers to, transitively, to out.
func (c chainID) withDeps(out []chainID) []chainID {
	out = append(out, c)
	for _, d := range c.deps() {
		out = d.withDeps(out)
	}
	return out
}

// build returns the chain with its rules.
func (c chainID) build(fc *familyConfig) chain {
	ch := chain{name: c.name()}
	kind := c.kind
	key := kind.frontendKey()
	switch c.role {
	case roleDNAT:
		ch.rules = []rule{r(dnatMap{key: append(key, kRandom(c.n)), set: kind.endpointsMap()})}
	case roleStickySlot:
		affKey := append([]keyField{kSaddr}, key...)
		timeout := time.Duration(c.timeout) * time.Second
		ch.rules = []rule{
			r(dynUpdate{key: append(affKey, kConst(c.n)), set: kind.affinitySet(), timeout: timeout}),
			r(dnatMap{key: append(key, kConst(c.n)), set: kind.endpointsMap()}),
		}
	case roleSticky:
		ch.rules = stickyRules(c)
	case roleExternal:
		ch.rules = []rule{
			r(markOr{mark: fc.mark}).withComment("masquerade"),
			r(verdictStmt{goTo(c.target().name())}),
		}
	case roleExternalLocal:
		ch.rules = externalLocalRules(fc, c)
	}
	return ch
}

// stickyRules sends a client recorded for a slot to that slot, and everyone else to a slot
// chosen uniformly at random (each rule picks its slot with probability 1/(remaining slots)).
func stickyRules(c chainID) []rule {
	affKey := append([]keyField{kSaddr}, c.kind.frontendKey()...)
	slots := c.deps()
	rules := make([]rule, 0, 2*len(slots))
	for i, s := range slots {
		key := append(append([]keyField(nil), affKey...), kConst(i))
		rules = append(rules, r(setMatch{key: key, set: c.kind.affinitySet()}, verdictStmt{goTo(s.name())}))
	}
	for i, s := range slots {
		if i == len(slots)-1 {
			rules = append(rules, r(verdictStmt{goTo(s.name())}))
			break
		}
		rules = append(rules, r(randomZero{mod: uint32(len(slots) - i)}, verdictStmt{goTo(s.name())}))
	}
	return rules
}

// externalLocalRules implement externalTrafficPolicy: Local for one frontend kind: pods and
// the host itself reach the cluster-wide endpoints (the host masqueraded), everything else
// the node-local endpoints via the local verdict map (no element: no local endpoints, and the
// filter chains drop the packet).
func externalLocalRules(fc *familyConfig, c chainID) []rule {
	target := c.target().name()
	var rules []rule
	if ifLocal := fc.detectorMatch(false); ifLocal != nil {
		rules = append(rules, r(ifLocal, verdictStmt{goTo(target)}).withComment("short-circuit pod traffic"))
	}
	rules = append(rules,
		r(fibLocal{saddr: true}, markOr{mark: fc.mark}).withComment("masquerade local traffic"),
		r(fibLocal{saddr: true}, verdictStmt{goTo(target)}).withComment("short-circuit local traffic"),
		r(vmapLookup{key: c.kind.frontendKey(), set: c.kind.localMap()}),
	)
	return rules
}
