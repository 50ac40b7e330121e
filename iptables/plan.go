package iptables

import (
	"slices"
	"strconv"
	"strings"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// portPlan holds the decisions upstream's syncProxyRules makes for one service port, so that
// each chain is built by a short function.
type portPlan struct {
	fr     *familyRules
	p      *proxier.ServicePort
	choice endpoints.Choice
	name   string // "ns/svc[:port]"
	proto  string // lowercase protocol
	names  portChains

	hasEndpoints         bool // usable endpoints anywhere (else REJECT everything)
	usesCluster          bool // the KUBE-SVC chain exists
	usesLocal            bool // the KUBE-SVL chain exists
	hasInternalEndpoints bool // ClusterIP traffic has somewhere to go
	hasExternalEndpoints bool // external traffic from outside has somewhere to go
	usesExternal         bool // the KUBE-EXT chain exists
	usesFirewall         bool // the KUBE-FW chain exists
	internalChain        string
	externalPolicyChain  string
	loadBalancerChain    string
	filterTarget         [2]string // [internal, external]: "DROP", "REJECT" or "" (no filter rule)
	filterComment        [2]string
}

// newPortPlan computes the plan for p given the endpoint choice.
func newPortPlan(fr *familyRules, p *proxier.ServicePort, choice endpoints.Choice) *portPlan {
	pl := &portPlan{fr: fr, p: p, choice: choice, name: p.Name.String(), proto: strings.ToLower(string(p.Protocol))}
	pl.names = chainsFor(pl.name, pl.proto)
	pol := p.Policy()
	pl.hasEndpoints = choice.HasAny
	pl.usesCluster = len(choice.Cluster) > 0 && pol.UsesClusterEndpoints()
	pl.usesLocal = len(choice.Local) > 0 && pol.UsesLocalEndpoints()

	pl.internalChain, pl.hasInternalEndpoints = pl.names.cluster, pl.hasEndpoints
	if p.InternalPolicyLocal {
		pl.internalChain = pl.names.local
		pl.hasInternalEndpoints = pl.hasEndpoints && len(choice.Local) > 0
	}
	pl.externalPolicyChain, pl.hasExternalEndpoints = pl.names.cluster, pl.hasEndpoints
	if p.ExternalPolicyLocal {
		pl.externalPolicyChain = pl.names.local
		pl.hasExternalEndpoints = pl.hasEndpoints && len(choice.Local) > 0
	}
	pl.usesExternal = pl.hasEndpoints && p.ExternallyAccessible()
	pl.usesFirewall = pl.hasEndpoints && len(p.LoadBalancerVIPs) > 0 && len(p.LoadBalancerSourceRanges) > 0
	pl.loadBalancerChain = pl.names.external
	if pl.usesFirewall {
		pl.loadBalancerChain = pl.names.firewall
	}
	switch {
	case !pl.hasEndpoints:
		c := pl.name + " has no endpoints"
		pl.filterTarget, pl.filterComment = [2]string{"REJECT", "REJECT"}, [2]string{c, c}
	default:
		c := pl.name + " has no local endpoints"
		if !pl.hasInternalEndpoints {
			pl.filterTarget[0], pl.filterComment[0] = "DROP", c
		}
		if !pl.hasExternalEndpoints {
			pl.filterTarget[1], pl.filterComment[1] = "DROP", c
		}
	}
	return pl
}

// dest returns "-m proto -p proto -d ip --dport port" for one frontend address.
func (pl *portPlan) dest(ip string, port int32) string {
	return join(protoMatch(pl.proto), "-d", ip, "--dport", strconv.Itoa(int(port)))
}

// topRules returns the port's rules in the shared top-level chains, deduplicated.
func (pl *portPlan) topRules() []topRule {
	var out []topRule
	add := func(table, chain, spec string) {
		r := topRule{table: table, chain: chain, spec: spec}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	p, cip := pl.p, pl.p.ClusterIP.String()
	if pl.hasInternalEndpoints {
		add(tableNAT, ChainServices, join(comment(pl.name+" cluster IP"), pl.dest(cip, p.Port), jump(pl.internalChain)))
	} else {
		add(tableFilter, ChainServices, join(comment(pl.filterComment[0]), pl.dest(cip, p.Port), jump(pl.filterTarget[0])))
	}
	for _, ip := range p.ExternalIPs {
		if pl.hasEndpoints {
			add(tableNAT, ChainServices, join(comment(pl.name+" external IP"), pl.dest(ip.String(), p.Port), jump(pl.names.external)))
		}
		if !pl.hasExternalEndpoints {
			add(tableFilter, ChainExternalServices, join(comment(pl.filterComment[1]), pl.dest(ip.String(), p.Port), jump(pl.filterTarget[1])))
		}
	}
	for _, ip := range p.LoadBalancerVIPs {
		if pl.hasEndpoints {
			add(tableNAT, ChainServices, join(comment(pl.name+" loadbalancer IP"), pl.dest(ip.String(), p.Port), jump(pl.loadBalancerChain)))
		}
		if pl.usesFirewall {
			add(tableFilter, ChainProxyFirewall, join(comment(pl.name+" traffic not accepted by "+pl.names.firewall), pl.dest(ip.String(), p.Port), jump("DROP")))
		}
	}
	if !pl.hasExternalEndpoints {
		for _, ip := range p.LoadBalancerVIPs {
			add(tableFilter, ChainExternalServices, join(comment(pl.filterComment[1]), pl.dest(ip.String(), p.Port), jump(pl.filterTarget[1])))
		}
	}
	if p.NodePort != 0 {
		nodePort := strconv.Itoa(int(p.NodePort))
		if pl.hasEndpoints {
			add(tableNAT, ChainNodePorts, join(comment(pl.name), protoMatch(pl.proto), "--dport", nodePort, jump(pl.names.external)))
		}
		if !pl.hasExternalEndpoints {
			add(tableFilter, ChainExternalServices, join(comment(pl.filterComment[1]), "-m addrtype --dst-type LOCAL", protoMatch(pl.proto), "--dport", nodePort, jump(pl.filterTarget[1])))
		}
	}
	if p.HealthCheckNodePort != 0 {
		add(tableFilter, ChainNodePorts, join(comment(pl.name+" health check node port"), protoMatch("tcp"), "--dport", strconv.Itoa(int(p.HealthCheckNodePort)), jump("ACCEPT")))
	}
	for _, r := range pl.hairpinRules() {
		add(r.table, r.chain, r.spec)
	}
	return out
}

// internalMasqRules returns the masquerade rule that opens the internal policy chain.
func (pl *portPlan) internalMasqRules(chain string) []string {
	if !pl.hasInternalEndpoints || chain != pl.internalChain {
		return nil
	}
	match := join(comment(pl.name+" cluster IP"), pl.dest(pl.p.ClusterIP.String(), pl.p.Port))
	switch {
	case pl.fr.masqueradeAll:
		return []string{join(match, jump(ChainMarkMasq))}
	case pl.fr.detector.Implemented():
		return []string{join(match, detectorMatch(pl.fr.detector, false), jump(ChainMarkMasq))}
	}
	return nil
}

// externalChain returns the KUBE-EXT chain: masquerade and short-circuit handling of traffic
// to NodePorts, external IPs and LoadBalancer IPs.
func (pl *portPlan) externalChain() (chainRules, bool) {
	if !pl.usesExternal {
		return chainRules{}, false
	}
	c := chainRules{name: pl.names.external}
	if !pl.p.ExternalPolicyLocal {
		c.rules = append(c.rules, join(comment("masquerade traffic for "+pl.name+" external destinations"), jump(ChainMarkMasq)))
	} else {
		if pl.fr.detector.Implemented() {
			c.rules = append(c.rules, join(comment("pod traffic for "+pl.name+" external destinations"), detectorMatch(pl.fr.detector, true), jump(pl.names.cluster)))
		}
		c.rules = append(c.rules,
			join(comment("masquerade LOCAL traffic for "+pl.name+" external destinations"), "-m addrtype --src-type LOCAL", jump(ChainMarkMasq)),
			join(comment("route LOCAL traffic for "+pl.name+" external destinations"), "-m addrtype --src-type LOCAL", jump(pl.names.cluster)))
	}
	if pl.hasExternalEndpoints {
		c.rules = append(c.rules, jump(pl.externalPolicyChain))
	}
	return c, true
}

// firewallChain returns the KUBE-FW chain enforcing loadBalancerSourceRanges; traffic falling
// through it is dropped by KUBE-PROXY-FIREWALL in filter.
func (pl *portPlan) firewallChain() (chainRules, bool) {
	if !pl.usesFirewall {
		return chainRules{}, false
	}
	c := chainRules{name: pl.names.firewall}
	head := comment(pl.name + " loadbalancer IP")
	allowFromNode := false
	for _, cidr := range pl.p.LoadBalancerSourceRanges {
		c.rules = append(c.rules, join(head, "-s", cidr.String(), jump(pl.names.external)))
		for _, ip := range pl.fr.nodeIPs {
			allowFromNode = allowFromNode || cidr.Contains(ip)
		}
	}
	if allowFromNode {
		for _, ip := range pl.p.LoadBalancerVIPs {
			c.rules = append(c.rules, join(head, "-s", ip.String(), jump(pl.names.external)))
		}
	}
	c.rules = append(c.rules, comment("other traffic to "+pl.name+" will be dropped by KUBE-PROXY-FIREWALL"))
	return c, true
}

// policyChain returns a KUBE-SVC or KUBE-SVL chain balancing over eps, DNATing directly (no
// KUBE-SEP chains). With ClientIP affinity, a rule per endpoint first sends clients it has
// seen within the timeout back to it (and refreshes their entry, as upstream's KUBE-SEP --set
// does); the balancing rules then record the client in the chosen endpoint's list. The list
// is set after the statistic match, so only when that rule was chosen.
func (pl *portPlan) policyChain(name string, eps []endpoints.Endpoint) chainRules {
	c := chainRules{name: name, rules: pl.internalMasqRules(name)}
	if pl.p.ClientIPAffinity {
		seconds := strconv.Itoa(int(pl.p.StickyMaxAgeSeconds))
		for _, ep := range eps {
			c.rules = append(c.rules, join(pl.fr.endpointComment(pl.name+" -> "+ep.String()),
				"-m recent --name", pl.affinityList(ep), "--update --seconds", seconds, "--reap", pl.dnat(ep)))
		}
	}
	for i, ep := range eps {
		stat, recent := "", ""
		if i < len(eps)-1 {
			stat = "-m statistic --mode random --probability " + probability(len(eps)-i)
		}
		if pl.p.ClientIPAffinity {
			recent = "-m recent --name " + pl.affinityList(ep) + " --set"
		}
		c.rules = append(c.rules, join(pl.fr.endpointComment(pl.name+" -> "+ep.String()), stat, recent, pl.dnat(ep)))
	}
	return c
}

// affinityList returns the name of an endpoint's session-affinity list: upstream's KUBE-SEP
// chain name of the endpoint, which upstream uses as the list name.
func (pl *portPlan) affinityList(ep endpoints.Endpoint) string {
	return endpointChain(pl.name, pl.proto, ep.String())
}

// dnat returns "-p proto -j DNAT --to-destination EP". Unlike upstream it leaves out
// "-m proto": without options that match only repeats -p, and on iptables-nft it is one more
// xtables expression per endpoint rule, for packets and for every commit's validation.
func (pl *portPlan) dnat(ep endpoints.Endpoint) string {
	return join("-p", pl.proto, jump("DNAT"), "--to-destination", ep.String())
}

// hairpinRules returns the port's KUBE-HAIRPIN rules: a node-local endpoint reaching itself
// through the Service (source and DNATed destination are its own address) is masqueraded,
// so that its replies come back through conntrack. Remote endpoints cannot hairpin here.
func (pl *portPlan) hairpinRules() []topRule {
	var out []topRule
	for _, ep := range pl.choice.AllReachable {
		if !ep.Local {
			continue
		}
		ip := ep.IP.String()
		out = append(out, topRule{table: tableNAT, chain: ChainHairpin, spec: join(
			pl.fr.endpointComment(pl.name+" hairpin "+ep.String()), "-m conntrack --ctstate DNAT", "-s", ip, "-d", ip,
			protoMatch(pl.proto), "--dport", strconv.Itoa(int(ep.Port)), jump(ChainMarkMasq))})
	}
	return out
}
