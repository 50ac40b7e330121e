package iptables

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// jumpRule is a rule in a built-in chain jumping to one of nodeproxy's top-level chains. These
// are installed with single iptables commands (go-iptables), never with iptables-restore, so
// that the rest of the built-in chains is left alone.
type jumpRule struct {
	table, from, to, comment string
	newOnly                  bool // match only new connections (-m conntrack --ctstate NEW)
}

// jumpRules are upstream's iptablesJumpChains, in upstream's order: each is inserted at the top
// of its built-in chain, so the last one ends up first.
var jumpRules = []jumpRule{
	{tableFilter, "INPUT", ChainExternalServices, "kubernetes externally-visible service portals", true},
	{tableFilter, "FORWARD", ChainExternalServices, "kubernetes externally-visible service portals", true},
	{tableFilter, "INPUT", ChainNodePorts, "kubernetes health check service ports", false},
	{tableFilter, "FORWARD", ChainServices, "kubernetes service portals", true},
	{tableFilter, "OUTPUT", ChainServices, "kubernetes service portals", true},
	{tableFilter, "FORWARD", ChainForward, "kubernetes forwarding rules", false},
	{tableFilter, "INPUT", ChainProxyFirewall, "kubernetes load balancer firewall", true},
	{tableFilter, "OUTPUT", ChainProxyFirewall, "kubernetes load balancer firewall", true},
	{tableFilter, "FORWARD", ChainProxyFirewall, "kubernetes load balancer firewall", true},
	{tableNAT, "OUTPUT", ChainServices, "kubernetes service portals", false},
	{tableNAT, "PREROUTING", ChainServices, "kubernetes service portals", false},
	{tableNAT, "POSTROUTING", ChainPostrouting, "kubernetes postrouting rules", false},
}

// kubeletFirewallJumps are the jumps to kubelet's KUBE-FIREWALL, installed (as upstream does)
// only when nodeproxy writes the anti-martian rule into it, and never removed.
var kubeletFirewallJumps = []jumpRule{
	{table: tableFilter, from: "INPUT", to: ChainKubeletFirewall},
	{table: tableFilter, from: "OUTPUT", to: ChainKubeletFirewall},
}

// args returns the rule as iptables arguments.
func (j jumpRule) args() []string {
	var a []string
	if j.newOnly {
		a = append(a, "-m", "conntrack", "--ctstate", "NEW")
	}
	if j.comment != "" {
		a = append(a, "-m", "comment", "--comment", j.comment)
	}
	return append(a, "-j", j.to)
}

// loopback returns the family's loopback range.
func loopback(family v1.IPFamily) netip.Prefix {
	if family == v1.IPv6Protocol {
		return netip.MustParsePrefix("::1/128")
	}
	return netip.MustParsePrefix("127.0.0.0/8")
}

// usesKubeletFirewall reports whether the family writes the anti-martian rule (IPv4 with
// localhost NodePorts).
func (fr *familyRules) usesKubeletFirewall() bool {
	return fr.family == v1.IPv4Protocol && fr.localhostNodePorts
}

// topChains returns the top-level chains of each table; a full sync flushes and rewrites them.
func (fr *familyRules) topChains() map[string][]string {
	filter := []string{ChainServices, ChainExternalServices, ChainForward, ChainNodePorts, ChainProxyFirewall}
	if fr.usesKubeletFirewall() {
		filter = append(filter, ChainKubeletFirewall)
	}
	return map[string][]string{
		tableFilter: filter,
		tableNAT:    {ChainServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq, ChainHairpin},
	}
}

// staticRules returns the rules of the top-level chains that depend on no Service (written on
// full syncs only), except the NodePort jumps that end nat KUBE-SERVICES (nodePortJumps).
func (fr *familyRules) staticRules() []topRule {
	mark := fr.masqMark + "/" + fr.masqMark
	var out []topRule
	nat := func(chain, spec string) { out = append(out, topRule{table: tableNAT, chain: chain, spec: spec}) }
	filter := func(chain, spec string) { out = append(out, topRule{table: tableFilter, chain: chain, spec: spec}) }

	// Hairpin connections get the mark first (only DNATed ones can be hairpin: the jump skips
	// every other connection cheaply), so the mark check below masquerades them.
	nat(ChainPostrouting, join(comment("kubernetes hairpin traffic requiring SNAT"), "-m conntrack --ctstate DNAT", jump(ChainHairpin)))
	nat(ChainPostrouting, join("-m mark ! --mark", mark, jump("RETURN")))
	// Clear the mark so that a packet re-traversing the stack is not masqueraded twice.
	nat(ChainPostrouting, join(jump("MARK"), "--xor-mark", fr.masqMark))
	nat(ChainPostrouting, join(comment("kubernetes service traffic requiring SNAT"), jump("MASQUERADE"), "--random-fully"))
	for _, r := range fr.markMasqChain().rules {
		nat(ChainMarkMasq, r)
	}

	if fr.usesKubeletFirewall() {
		filter(ChainKubeletFirewall, join(comment("block incoming localnet connections"),
			"-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT", jump("DROP")))
	}
	if !fr.tcpBeLiberal {
		filter(ChainForward, join("-m conntrack --ctstate INVALID", jump("DROP")))
	}
	filter(ChainForward, join(comment("kubernetes forwarding rules"), "-m mark --mark", mark, jump("ACCEPT")))
	filter(ChainForward, join(comment("kubernetes forwarding conntrack rule"), "-m conntrack --ctstate RELATED,ESTABLISHED", jump("ACCEPT")))
	return out
}

// markMasqChain returns KUBE-MARK-MASQ with its rule. Per-port chains jump to it, so chunk
// restores (which write per-port chains before the final restore writes the top level)
// rewrite it too: each chunk then restores into an empty table as well.
func (fr *familyRules) markMasqChain() chainRules {
	return chainRules{name: ChainMarkMasq, rules: []string{join(jump("MARK"), "--or-mark", fr.masqMark)}}
}

// nodePortJumps returns the rules that must end nat KUBE-SERVICES: local destinations (all, or
// those within the NodePort address prefixes) go to KUBE-NODEPORTS. Loopback destinations are
// excluded unless IPv4 localhost NodePorts are on (IPv6 never supports them).
func (fr *familyRules) nodePortJumps() []topRule {
	const text = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
	loop := loopback(fr.family)
	excludeLoop := ""
	if fr.family == v1.IPv6Protocol || !fr.localhostNodePorts {
		excludeLoop = "! -d " + loop.String()
	}
	if fr.nodePortsOnAllLocal {
		return []topRule{{table: tableNAT, chain: ChainServices,
			spec: join(comment(text), "-m addrtype --dst-type LOCAL", excludeLoop, jump(ChainNodePorts))}}
	}
	var out []topRule
	for _, pfx := range fr.nodePortAddresses {
		exclude := ""
		if pfx.Overlaps(loop) {
			exclude = excludeLoop
		}
		out = append(out, topRule{table: tableNAT, chain: ChainServices,
			spec: join(comment(text), "-d", pfx.String(), "-m addrtype --dst-type LOCAL", exclude, jump(ChainNodePorts))})
	}
	return out
}
