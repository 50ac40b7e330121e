package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// Tables nodeproxy writes to.
const (
	tableFilter = "filter"
	tableNAT    = "nat"
	tableMangle = "mangle"
)

// The named chains other components rely on; they keep upstream kube-proxy's meaning.
const (
	// ChainServices (nat and filter) captures ClusterIPs, external IPs and LoadBalancer IPs.
	ChainServices = "KUBE-SERVICES"
	// ChainExternalServices (filter) rejects or drops external traffic without usable endpoints.
	ChainExternalServices = "KUBE-EXTERNAL-SERVICES"
	// ChainNodePorts (nat: NodePort dispatch; filter: health-check node port accepts).
	ChainNodePorts = "KUBE-NODEPORTS"
	// ChainPostrouting (nat) masquerades marked traffic.
	ChainPostrouting = "KUBE-POSTROUTING"
	// ChainHairpin (nat, jumped to first from KUBE-POSTROUTING) marks for masquerading the
	// connections a node-local endpoint makes to itself through a Service (hairpin). It is
	// nodeproxy's own: upstream does this in each KUBE-SEP chain, which nodeproxy has not.
	ChainHairpin = "KUBE-HAIRPIN"
	// ChainMarkMasq (nat) marks a packet for masquerading.
	ChainMarkMasq = "KUBE-MARK-MASQ"
	// ChainForward (filter) accepts forwarded service traffic and drops INVALID conntrack state.
	ChainForward = "KUBE-FORWARD"
	// ChainProxyFirewall (filter) drops LoadBalancer traffic not allowed by source ranges.
	ChainProxyFirewall = "KUBE-PROXY-FIREWALL"
	// ChainCanary (mangle, nat, filter) is the empty-but-for-a-marker chain whose loss reveals an
	// external flush.
	ChainCanary = "KUBE-PROXY-CANARY"
	// ChainKubeletFirewall (filter) is kubelet's chain; nodeproxy writes only the anti-martian
	// rule for localhost NodePorts into it, as upstream, and never deletes it.
	ChainKubeletFirewall = "KUBE-FIREWALL"
)

// Per-service-port chain name prefixes (all in nat), as upstream. nodeproxy writes no
// KUBE-SEP chain (its KUBE-SVC/SVL chains DNAT directly); the prefix is kept to delete
// upstream's (or older nodeproxy's) KUBE-SEP chains, and KUBE-SEP names are the names of the
// session-affinity "recent" lists.
const (
	prefixClusterPolicy = "KUBE-SVC-"
	prefixLocalPolicy   = "KUBE-SVL-"
	prefixExternal      = "KUBE-EXT-"
	prefixFirewall      = "KUBE-FW-"
	prefixEndpoint      = "KUBE-SEP-"
)

var servicePrefixes = []string{prefixClusterPolicy, prefixLocalPolicy, prefixExternal, prefixFirewall, prefixEndpoint}

// isServiceChain reports whether a nat chain name is a per-service-port chain (ours or
// upstream kube-proxy's: the names are the same).
func isServiceChain(name string) bool {
	for _, p := range servicePrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// hash16 returns the first 16 base32 characters of sha256(s): chain names must stay within
// iptables' 28 characters.
func hash16(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// portChains are the names of one service port's chains. The hash is upstream's
// (sha256 of "ns/name:port" + lowercase protocol), so nodeproxy takes over upstream's chains.
type portChains struct {
	cluster, local, external, firewall string
}

// chainsFor returns the chain names of the service port named name ("ns/svc[:port]") with the
// lowercase protocol proto.
func chainsFor(name, proto string) portChains {
	h := hash16(name + proto)
	return portChains{
		cluster:  prefixClusterPolicy + h,
		local:    prefixLocalPolicy + h,
		external: prefixExternal + h,
		firewall: prefixFirewall + h,
	}
}

// endpointChain returns upstream's KUBE-SEP chain name of one endpoint ("ip:port" or
// "[ip6]:port"). nodeproxy uses it as the name of the endpoint's session-affinity list
// (-m recent --name), which upstream names after that chain, so that affinity state carries
// over between the two.
func endpointChain(name, proto, endpoint string) string {
	return prefixEndpoint + hash16(name+proto+endpoint)
}
