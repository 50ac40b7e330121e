package iptables

import (
	"net/netip"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// topRule is one rule a service port owns in a top-level chain shared by every service port
// (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES, KUBE-PROXY-FIREWALL, KUBE-HAIRPIN).
type topRule struct {
	table, chain string
	// spec is the rule after "-A CHAIN ", in restore syntax.
	spec string
}

// chainRules is one chain with its rules (specs after "-A CHAIN "): a per-service-port nat
// chain (KUBE-SVC/SVL/EXT/FW), or KUBE-MARK-MASQ at the head of a chunk restore.
type chainRules struct {
	name  string
	rules []string
}

// portRules is everything one service port contributes to the ruleset.
type portRules struct {
	top    []topRule
	chains []chainRules
	// endpointCount is the number of endpoints the port was built from (large-cluster mode
	// counts them).
	endpointCount int
}

// familyRules is what rule building needs to know about one IP family's configuration.
type familyRules struct {
	family        v1.IPFamily
	masqMark      string // e.g. "0x00004000"
	masqueradeAll bool
	detector      proxier.LocalDetector
	// nodeIPs are the node's addresses of this family (LB source ranges containing one allow
	// the LB VIPs as sources, as upstream).
	nodeIPs []netip.Addr
	// nodePortsOnAllLocal makes NodePorts answer on every local address; otherwise they
	// answer on the local addresses within nodePortAddresses (possibly none).
	nodePortsOnAllLocal bool
	nodePortAddresses   []netip.Prefix
	// localhostNodePorts is true when IPv4 NodePorts answer on 127.0.0.0/8 (route_localnet).
	localhostNodePorts bool
	// tcpBeLiberal suppresses the INVALID drop rule in KUBE-FORWARD.
	tcpBeLiberal bool
	// largeCluster drops the comments of per-endpoint rules, as upstream's large-cluster
	// mode does above largeClusterEndpointsThreshold endpoints (see largeClusterMode).
	largeCluster bool
}

// largeClusterEndpointsThreshold is upstream's: with more endpoints than this in all service
// ports together, per-endpoint rules carry no comment. Besides a smaller ruleset, this makes
// every change cheaper on iptables-nft: a comment is an xtables match the kernel walks on
// each commit that adds a jump or DNAT rule (it validates the whole chain graph reachable
// from the nat table's base chains, once per hook).
const largeClusterEndpointsThreshold = 1000

// largeClusterMode reports whether a ruleset over totalEndpoints endpoints is built in
// large-cluster mode.
func largeClusterMode(totalEndpoints int) bool {
	return totalEndpoints > largeClusterEndpointsThreshold
}

// endpointComment returns the comment match of a per-endpoint rule: none in large-cluster
// mode.
func (fr *familyRules) endpointComment(text string) string {
	if fr.largeCluster {
		return ""
	}
	return comment(text)
}

// comment returns the comment match for text.
func comment(text string) string { return `-m comment --comment "` + text + `"` }

// protoMatch returns "-m tcp -p tcp" for a lowercase protocol.
func protoMatch(proto string) string { return "-m " + proto + " -p " + proto }

// join joins non-empty rule fragments with single spaces.
func join(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		if p == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p)
	}
	return b.String()
}

// jump returns "-j target".
func jump(target string) string { return "-j " + target }

// detectorMatch returns the fragment matching traffic from local pods (local=true) or not
// from local pods, or "" when the detector is not implemented.
func detectorMatch(d proxier.LocalDetector, local bool) string {
	if !d.Implemented() {
		return ""
	}
	neg := ""
	if !local {
		neg = "! "
	}
	switch d.Mode {
	case proxier.LocalModeClusterCIDR, proxier.LocalModeNodeCIDR:
		return neg + "-s " + d.CIDR.Masked().String()
	case proxier.LocalModeBridgeInterface:
		return neg + "-i " + d.Interface
	case proxier.LocalModeInterfaceNamePrefix:
		return neg + "-i " + d.Interface + "+"
	}
	return ""
}

// probability formats 1/n as upstream ("%0.10f").
func probability(n int) string { return strconv.FormatFloat(1.0/float64(n), 'f', 10, 64) }

// buildPort returns the rules of one service port with its endpoints, as seen from node.
func (fr *familyRules) buildPort(p *proxier.ServicePort, eps []endpoints.Endpoint, node endpoints.Node) *portRules {
	pl := newPortPlan(fr, p, endpoints.Choose(eps, p.Policy(), node))
	out := &portRules{top: pl.topRules(), endpointCount: len(eps)}
	if c, ok := pl.externalChain(); ok {
		out.chains = append(out.chains, c)
	}
	if c, ok := pl.firewallChain(); ok {
		out.chains = append(out.chains, c)
	}
	if pl.usesCluster {
		out.chains = append(out.chains, pl.policyChain(pl.names.cluster, pl.choice.Cluster))
	}
	if pl.usesLocal {
		out.chains = append(out.chains, pl.policyChain(pl.names.local, pl.choice.Local))
	}
	return out
}
