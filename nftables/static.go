package nftables

import (
	"net/netip"
	"sync"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// Names of the sets and maps every table holds (see README.md for what each contains).
const (
	setClusterIPs             = "cluster-ips"
	setHairpin                = "hairpin-connections"
	setFirewallIPs            = "firewall-ips"
	setFirewallAllow          = "firewall-allow"
	mapServiceIPs             = "service-ips"
	mapServiceNodePorts       = "service-nodeports"
	mapServiceIPsLocal        = "service-ips-local"
	mapServiceNodePortsLocal  = "service-nodeports-local"
	mapNoEndpointServices     = "no-endpoint-services"
	mapNoEndpointNodePorts    = "no-endpoint-nodeports"
	chainServices             = "services"
	chainMasquerading         = "masquerading"
	chainClusterIPsCheck      = "cluster-ips-check"
	chainReject               = "reject-chain"
	chainServiceEndpointsChk  = "service-endpoints-check"
	chainNodePortEndpointsChk = "nodeport-endpoints-check"
	chainFirewallCheck        = "firewall-check"
	// affinitySetSize bounds each affinity set (client . frontend . slot entries).
	affinitySetSize = 1 << 20
)

// familyConfig is the configuration of one family's table.
type familyConfig struct {
	fam      *family
	detector proxier.LocalDetector
	// nodePortAddrs are the prefixes NodePorts answer on (nil: every local address).
	nodePortAddrs []netip.Prefix
	serviceCIDRs  []netip.Prefix
	nodeIPs       []netip.Addr
	mark          uint32
	masqAll       bool
	// names caches chain names (chainID to string). Ports are built on several goroutines
	// (resync), and elements generated on the staged cold start's encoding goroutine.
	names sync.Map
}

// chainName returns c's name, computed once.
func (fc *familyConfig) chainName(c chainID) string {
	if name, ok := fc.names.Load(c); ok {
		return name.(string)
	}
	name := c.name()
	fc.names.Store(c, name)
	return name
}

// detectorMatch returns the expression matching traffic from local pods (negate: traffic not
// from local pods), or nil when the detector is not implemented.
func (fc *familyConfig) detectorMatch(negate bool) ruleExpr {
	d := fc.detector
	if !d.Implemented() {
		return nil
	}
	switch d.Mode {
	case proxier.LocalModeClusterCIDR, proxier.LocalModeNodeCIDR:
		return addrMatch{saddr: true, prefix: d.CIDR.Masked(), negate: negate}
	case proxier.LocalModeInterfaceNamePrefix:
		return ifnameMatch{name: d.Interface, prefix: true, negate: negate}
	}
	return ifnameMatch{name: d.Interface, negate: negate}
}

// buildSets declares every set and map of a family's table, in creation order.
func buildSets(f *family) []*setSpec {
	a := f.addr
	vip := []fieldType{a, fieldProto, fieldPort}
	np := []fieldType{fieldProto, fieldPort}
	ep := []fieldType{a, fieldPort}
	out := []*setSpec{
		{name: setClusterIPs, key: []fieldType{a}, comment: "Active ClusterIPs"},
		{name: setHairpin, key: []fieldType{a, a, fieldProto, fieldPort}, comment: "local endpoint . itself . protocol . port: hairpin traffic to masquerade"},
		{name: setFirewallIPs, key: vip, comment: "LoadBalancer IPs and ports subject to loadBalancerSourceRanges"},
		{name: setFirewallAllow, key: []fieldType{a, fieldProto, fieldPort, a}, interval: true, comment: "LoadBalancer IP . protocol . port . allowed source range"},
		{name: mapServiceIPs, key: vip, verdictMap: true, comment: "ClusterIP, external IP and LoadBalancer IP traffic"},
		{name: mapServiceNodePorts, key: np, verdictMap: true, comment: "NodePort traffic"},
		{name: mapServiceIPsLocal, key: vip, verdictMap: true, comment: "externalTrafficPolicy Local: outside traffic to external IPs and LoadBalancer IPs"},
		{name: mapServiceNodePortsLocal, key: np, verdictMap: true, comment: "externalTrafficPolicy Local: outside traffic to NodePorts"},
		{name: mapNoEndpointServices, key: vip, verdictMap: true, comment: "drop or reject traffic to service IPs without usable endpoints"},
		{name: mapNoEndpointNodePorts, key: np, verdictMap: true, comment: "drop or reject traffic to NodePorts without usable endpoints"},
	}
	for _, k := range []frontendKind{kindVIP, kindVIPLocal, kindNodePort, kindNodePortLocal} {
		key := vip
		if k.isNodePort() {
			key = np
		}
		slotKey := append(append([]fieldType(nil), key...), fieldSlot)
		out = append(out,
			&setSpec{name: k.endpointsMap(), key: slotKey, data: ep, comment: "frontend . slot : endpoint"},
			&setSpec{name: k.affinitySet(), key: append([]fieldType{a}, slotKey...), dynamic: true, comment: "client . frontend . slot: ClientIP affinity"},
		)
	}
	return out
}

// staticChains returns the regular chains and then the base chains, in creation order.
func (fc *familyConfig) staticChains() []chain {
	vipKey := kindVIP.frontendKey()
	npKey := kindNodePort.frontendKey()
	out := []chain{
		{name: chainReject, rules: []rule{r(rejectStmt{})}},
		{name: chainServices, rules: fc.servicesRules()},
		{name: chainMasquerading, rules: []rule{
			r(markTest{mark: fc.mark}, markXor{mark: fc.mark}, masquerade{}),
			r(ctStatusDNAT{}, setMatch{key: []keyField{kSaddr, kDaddr, kL4Proto, kDport}, set: setHairpin}, masquerade{}),
		}},
		{name: chainClusterIPsCheck, rules: fc.clusterIPsCheckRules()},
		{name: chainServiceEndpointsChk, rules: []rule{r(vmapLookup{key: vipKey, set: mapNoEndpointServices})}},
		{name: chainNodePortEndpointsChk, rules: fc.nodePortRules(nil, vmapLookup{key: npKey, set: mapNoEndpointNodePorts})},
		{name: chainFirewallCheck, rules: []rule{r(
			setMatch{key: vipKey, set: setFirewallIPs},
			setMatch{key: append(kindVIP.frontendKey(), kSaddr), set: setFirewallAllow, negate: true},
			verdictStmt{verdictDropV},
		)}},
	}
	newConn := func(chain string) rule { return r(ctStateNew{}, verdictStmt{jumpTo(chain)}) }
	base := func(name, typ, hook string, prio int32, rules ...rule) chain {
		return chain{name: name, base: &baseHook{typ: typ, hook: hook, priority: prio}, rules: rules}
	}
	return append(out,
		base("filter-prerouting-pre-dnat", "filter", "prerouting", -110, newConn(chainFirewallCheck)),
		base("filter-output-pre-dnat", "filter", "output", -110, newConn(chainFirewallCheck)),
		base("filter-input", "filter", "input", 0, newConn(chainNodePortEndpointsChk), newConn(chainServiceEndpointsChk)),
		base("filter-forward", "filter", "forward", 0, newConn(chainServiceEndpointsChk), newConn(chainClusterIPsCheck)),
		base("filter-output", "filter", "output", 0, newConn(chainServiceEndpointsChk), newConn(chainClusterIPsCheck)),
		base("nat-prerouting", "nat", "prerouting", -100, r(verdictStmt{jumpTo(chainServices)})),
		base("nat-output", "nat", "output", -100, r(verdictStmt{jumpTo(chainServices)})),
		base("nat-postrouting", "nat", "postrouting", 100, r(verdictStmt{jumpTo(chainMasquerading)})),
	)
}

// servicesRules mark ClusterIP traffic for masquerading and dispatch service traffic.
func (fc *familyConfig) servicesRules() []rule {
	var rules []rule
	isClusterIP := setMatch{key: []keyField{kDaddr}, set: setClusterIPs}
	if fc.masqAll {
		rules = append(rules, r(isClusterIP, markOr{mark: fc.mark}).withComment("masquerade all clusterIP traffic"))
	} else if notLocal := fc.detectorMatch(true); notLocal != nil {
		rules = append(rules, r(isClusterIP, notLocal, markOr{mark: fc.mark}).withComment("masquerade clusterIP traffic from outside the cluster"))
	}
	rules = append(rules, r(vmapLookup{key: kindVIP.frontendKey(), set: mapServiceIPs}))
	return append(rules, fc.nodePortRules(fibLocal{}, vmapLookup{key: kindNodePort.frontendKey(), set: mapServiceNodePorts})...)
}

// nodePortRules returns one rule per NodePort address range ending in lookup, each starting
// with first (if any): NodePorts answer on local addresses in the configured ranges, or on
// every local address, but never on loopback addresses (as upstream's nftables mode).
func (fc *familyConfig) nodePortRules(first, lookup ruleExpr) []rule {
	notLoopback := addrMatch{prefix: fc.fam.loopback, negate: true}
	build := func(exprs ...ruleExpr) rule {
		if first != nil {
			exprs = append([]ruleExpr{first}, exprs...)
		}
		return r(append(exprs, lookup)...)
	}
	if len(fc.nodePortAddrs) == 0 {
		return []rule{build(notLoopback)}
	}
	var rules []rule
	for _, p := range fc.nodePortAddrs {
		switch {
		case fc.fam.loopback.Bits() <= p.Bits() && fc.fam.loopback.Contains(p.Addr()):
			continue // only loopback addresses: never a NodePort address
		case p.Overlaps(fc.fam.loopback):
			rules = append(rules, build(addrMatch{prefix: p}, notLoopback))
		default:
			rules = append(rules, build(addrMatch{prefix: p}))
		}
	}
	return rules
}

// clusterIPsCheckRules reject traffic to unknown ports of ClusterIPs and drop traffic to
// unallocated addresses of the service CIDRs (packets already DNATed no longer match).
func (fc *familyConfig) clusterIPsCheckRules() []rule {
	rules := []rule{r(setMatch{key: []keyField{kDaddr}, set: setClusterIPs}, rejectStmt{}).withComment("reject traffic to invalid ports of ClusterIPs")}
	for _, cidr := range fc.serviceCIDRs {
		rules = append(rules, r(addrMatch{prefix: cidr}, verdictStmt{verdictDropV}).withComment("drop traffic to unallocated ClusterIPs"))
	}
	return rules
}
