package proxiertest

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// Cases returns every packet-flow case of the World for one family. Names are the same in
// both families and unique within one. Expectations follow upstream kube-proxy v1.37 (nftables
// mode); the comments cite the upstream test (k8s.io/kubernetes pkg/proxy/nftables
// proxier_test.go) that states the same expectation.
func Cases(family v1.IPFamily) []Case {
	p := planFor(family)
	var all []Case
	for _, group := range []func(plan) []Case{
		clusterIPCases, nodePortCases, externalCases, policyCases, endpointStateCases,
	} {
		all = append(all, group(p)...)
	}
	return all
}

// ep formats host n on node at port as an "ip:port" endpoint.
func ep(p plan, node string, n int, port int32) string {
	return netip.AddrPortFrom(p.podIP(node, n), uint16(port)).String()
}

// both returns host n's endpoint on node-a and on node-b at port.
func both(p plan, n int, port int32) []string {
	return []string{ep(p, NodeAName, n, port), ep(p, NodeBName, n, port)}
}

// reach expects the probe to reach eps (each of them, over repeated probes).
func reach(masq bool, eps ...string) Want {
	return Want{Verdict: Reach, Endpoints: eps, Masquerade: masq}
}

var (
	rejected = Want{Verdict: Reject}
	dropped  = Want{Verdict: Drop}
)

// tcp and udp build a Case; dst is the zero Addr for node-a's lan address.
func tcp(name string, from Source, svc string, dst netip.Addr, port int32, want Want) Case {
	return Case{Name: name, From: from, Protocol: v1.ProtocolTCP, Dst: dst, Port: port, Want: want, Service: Namespace + "/" + svc}
}

func udp(name string, from Source, svc string, dst netip.Addr, port int32, want Want) Case {
	c := tcp(name, from, svc, dst, port, want)
	c.Protocol = v1.ProtocolUDP
	return c
}

// nodeIP is the zero Addr: "node-a's lan address" in a Case.
var nodeIP netip.Addr

// clusterIPCases covers plain ClusterIP traffic, protocols, ports and hairpin.
func clusterIPCases(p plan) []Case {
	plain, dns, mp, hp := p.clusterIP(10), p.clusterIP(11), p.clusterIP(13), p.clusterIP(33)
	sctp := tcp("sctp-clusterip-from-pod", FromLocalPod, "sctp", p.clusterIP(12), 9000,
		reach(false, ep(p, NodeBName, 12, 9000)))
	sctp.Protocol = v1.ProtocolSCTP
	return []Case{
		// TestClusterIPGeneral "clusterIP with multiple endpoints": pods are not masqueraded.
		tcp("clusterip-from-pod", FromLocalPod, "plain", plain, 80, reach(false, both(p, 10, 8080)...)),
		// TestInternalExternalMasquerade "node to ClusterIP" / "external to ClusterIP":
		// sources outside the cluster CIDR are masqueraded.
		tcp("clusterip-from-node", FromNode, "plain", plain, 80, reach(true, both(p, 10, 8080)...)),
		tcp("clusterip-from-outside", FromOutside, "plain", plain, 80, reach(true, both(p, 10, 8080)...)),
		// TestClusterIPGeneral "TCP-only port does not match UDP traffic" and "svc1 does not
		// accept svc2's ports": nftables rejects unknown ports of active ClusterIPs
		// (cluster-ips-check); iptables mode has no such rule.
		udp("clusterip-udp-to-tcp-only-port", FromLocalPod, "plain", plain, 80, rejected),
		tcp("clusterip-unknown-port", FromLocalPod, "plain", plain, 81, rejected),
		udp("dns-udp-from-pod", FromLocalPod, "dns", dns, 53, reach(false, both(p, 11, 5353)...)),
		tcp("dns-tcp-from-pod", FromLocalPod, "dns", dns, 53, reach(false, both(p, 11, 5353)...)),
		udp("dns-udp-from-node", FromNode, "dns", dns, 53, reach(true, both(p, 11, 5353)...)),
		udp("dns-udp-from-outside", FromOutside, "dns", dns, 53, reach(true, both(p, 11, 5353)...)),
		sctp,
		tcp("multiport-http-from-pod", FromLocalPod, "multiport", mp, 80, reach(false, both(p, 13, 8080)...)),
		tcp("multiport-metrics-from-pod", FromLocalPod, "multiport", mp, 9090, reach(false, both(p, 13, 9091)...)),
		// TestClusterIPGeneral "hairpin to cluster IP": an endpoint reaching itself through
		// its Service is masqueraded.
		tcp("hairpin-clusterip", FromEndpointPod, "hairpin", hp, 80, reach(true, ep(p, NodeAName, 33, 8080))),
		tcp("hairpin-service-from-other-pod", FromLocalPod, "hairpin", hp, 80, reach(false, ep(p, NodeAName, 33, 8080))),
	}
}

// nodePortCases covers NodePorts with externalTrafficPolicy Cluster and Local.
func nodePortCases(p plan) []Case {
	local := []string{ep(p, NodeAName, 15, 8080)}
	remote := ep(p, NodeBName, 16, 8080)
	return []Case{
		// TestInternalExternalMasquerade "external/pod/node to NodePort": eTP Cluster
		// masquerades every external destination, whoever the client.
		tcp("nodeport-from-outside", FromOutside, "nodeport", nodeIP, 30014, reach(true, both(p, 14, 8080)...)),
		tcp("nodeport-from-pod", FromLocalPod, "nodeport", nodeIP, 30014, reach(true, both(p, 14, 8080)...)),
		tcp("nodeport-from-node", FromNode, "nodeport", nodeIP, 30014, reach(true, both(p, 14, 8080)...)),
		udp("nodeport-udp-from-outside", FromOutside, "nodeport", nodeIP, 30015, reach(true, both(p, 14, 5353)...)),
		tcp("nodeport-clusterip-from-pod", FromLocalPod, "nodeport", p.clusterIP(14), 80, reach(false, both(p, 14, 8080)...)),
		// TestExternalTrafficPolicyLocal "external to NodePort hits only local endpoint,
		// unmasqueraded" and "pod to NodePort hits both endpoints, unmasqueraded";
		// TestInternalExternalMasquerade "node to NodePort with eTP:Local" (short-circuited
		// and masqueraded).
		tcp("etp-local-nodeport-from-outside", FromOutside, "nodeport-local", nodeIP, 30016, reach(false, local...)),
		tcp("etp-local-nodeport-from-pod", FromLocalPod, "nodeport-local", nodeIP, 30016, reach(false, both(p, 15, 8080)...)),
		tcp("etp-local-nodeport-from-node", FromNode, "nodeport-local", nodeIP, 30016, reach(true, both(p, 15, 8080)...)),
		// TestInternalExternalMasquerade "external to ClusterIP with eTP:Local": eTP does not
		// apply to ClusterIP traffic.
		tcp("etp-local-clusterip-from-outside", FromOutside, "nodeport-local", p.clusterIP(15), 80, reach(true, both(p, 15, 8080)...)),
		// §7.8 of the upstream map / TestOverallNFTablesRules svc2: eTP Local without local
		// endpoints drops outside traffic, while pods and the node are short-circuited to
		// the cluster-wide endpoints.
		tcp("etp-local-remote-nodeport-from-outside", FromOutside, "nodeport-local-remote", nodeIP, 30017, dropped),
		tcp("etp-local-remote-nodeport-from-pod", FromLocalPod, "nodeport-local-remote", nodeIP, 30017, reach(false, remote)),
		tcp("etp-local-remote-nodeport-from-node", FromNode, "nodeport-local-remote", nodeIP, 30017, reach(true, remote)),
	}
}

// externalCases covers LoadBalancer IPs with source ranges and external IPs.
func externalCases(p plan) []Case {
	lb, blocked, ext, extLocal := p.extIP(17), p.extIP(18), p.extIP(20), p.extIP(15)
	return []Case{
		// TestLoadBalancer "accepted external to LB1" (masqueraded: eTP Cluster).
		tcp("lb-from-outside-in-source-ranges", FromOutside, "lb", lb, 80, reach(true, both(p, 17, 8080)...)),
		// TestLoadBalancer "pod to LB1 (blocked by LoadBalancerSourceRanges)"; the node is not
		// in the ranges either, so its traffic is dropped too (firewall-check in output).
		tcp("lb-from-pod-not-in-source-ranges", FromLocalPod, "lb", lb, 80, dropped),
		tcp("lb-from-node-not-in-source-ranges", FromNode, "lb", lb, 80, dropped),
		// TestLoadBalancer "nodePort bypasses LoadBalancerSourceRanges".
		tcp("lb-nodeport-from-outside", FromOutside, "lb", nodeIP, 30018, reach(true, both(p, 17, 8080)...)),
		// TestLoadBalancer "blocked external to LB1".
		tcp("lb-blocked-from-outside", FromOutside, "lb-blocked", blocked, 80, dropped),
		tcp("lb-blocked-nodeport-from-outside", FromOutside, "lb-blocked", nodeIP, 30019, reach(true, ep(p, NodeAName, 18, 8080))),
		tcp("externalip-from-outside", FromOutside, "external-ip", ext, 80, reach(true, both(p, 20, 8080)...)),
		// TestInternalExternalMasquerade "pod to LB": traffic to an external destination
		// with eTP Cluster is masqueraded even from a pod.
		tcp("externalip-from-pod", FromLocalPod, "external-ip", ext, 80, reach(true, both(p, 20, 8080)...)),
		tcp("externalip-from-node", FromNode, "external-ip", ext, 80, reach(true, both(p, 20, 8080)...)),
		// TestExternalTrafficPolicyLocal "external to external IP hits only local endpoint,
		// unmasqueraded" and "pod to external IP hits both endpoints, unmasqueraded".
		tcp("etp-local-externalip-from-outside", FromOutside, "nodeport-local", extLocal, 80, reach(false, ep(p, NodeAName, 15, 8080))),
		tcp("etp-local-externalip-from-pod", FromLocalPod, "nodeport-local", extLocal, 80, reach(false, both(p, 15, 8080)...)),
	}
}

// policyCases covers internalTrafficPolicy Local and session affinity.
func policyCases(p plan) []Case {
	itp, itpRemote, aff := p.clusterIP(21), p.clusterIP(22), p.clusterIP(23)
	local := ep(p, NodeAName, 21, 8080)
	sticky := func(masq bool) Want {
		w := reach(masq, both(p, 23, 8080)...)
		w.Sticky = true
		return w
	}
	return []Case{
		// TestInternalExternalMasquerade "pod/node/external to ClusterIP with iTP:Local":
		// only the local endpoint; iTP does not change masquerading.
		tcp("itp-local-from-pod", FromLocalPod, "itp-local", itp, 80, reach(false, local)),
		tcp("itp-local-from-node", FromNode, "itp-local", itp, 80, reach(true, local)),
		tcp("itp-local-from-outside", FromOutside, "itp-local", itp, 80, reach(true, local)),
		tcp("itp-local-hairpin", FromEndpointPod, "itp-local", itp, 80, reach(true, local)),
		// TestInternalTrafficPolicy "internalTrafficPolicy is local and there are no local
		// endpoints": ClusterIP traffic is dropped.
		tcp("itp-local-remote-from-pod", FromLocalPod, "itp-local-remote", itpRemote, 80, dropped),
		tcp("itp-local-remote-from-node", FromNode, "itp-local-remote", itpRemote, 80, dropped),
		tcp("affinity-from-pod", FromLocalPod, "affinity", aff, 80, sticky(false)),
		tcp("affinity-from-outside", FromOutside, "affinity", aff, 80, sticky(true)),
	}
}

// endpointStateCases covers missing, terminating, not-ready and zone-hinted endpoints.
func endpointStateCases(p plan) []Case {
	none := p.clusterIP(24)
	return []Case{
		// TestNoEndpointsReject: ClusterIP and NodePort of a Service without endpoints reject.
		tcp("no-endpoints-clusterip-from-pod", FromLocalPod, "no-endpoints", none, 80, rejected),
		udp("no-endpoints-clusterip-udp-from-pod", FromLocalPod, "no-endpoints", none, 53, rejected),
		tcp("no-endpoints-clusterip-from-node", FromNode, "no-endpoints", none, 80, rejected),
		tcp("no-endpoints-nodeport-from-outside", FromOutside, "no-endpoints", nodeIP, 30024, rejected),
		udp("no-endpoints-nodeport-udp-from-outside", FromOutside, "no-endpoints", nodeIP, 30025, rejected),
		tcp("no-endpoints-nodeport-from-pod", FromLocalPod, "no-endpoints", nodeIP, 30024, rejected),
		// TestTerminatingEndpointsTrafficPolicyCluster: serving+terminating endpoints are used
		// only when no endpoint is ready.
		tcp("terminating-only-from-pod", FromLocalPod, "terminating-only", p.clusterIP(25), 80, reach(false, both(p, 25, 8080)...)),
		tcp("ready-and-terminating-from-pod", FromLocalPod, "ready-and-terminating", p.clusterIP(26), 80,
			reach(false, ep(p, NodeAName, 26, 8080))),
		tcp("not-ready-excluded-from-pod", FromLocalPod, "not-ready", p.clusterIP(27), 80, reach(false, ep(p, NodeAName, 27, 8080))),
		// Zone hints (P/topology.go CategorizeEndpoints): every ready endpoint is hinted and one
		// is hinted for z1, so only that one (on node-b) is used, not node-a's local one.
		tcp("topology-zone-hint-from-pod", FromLocalPod, "topology", p.clusterIP(31), 80, reach(false, ep(p, NodeBName, 31, 8080))),
		tcp("topology-zone-hint-from-node", FromNode, "topology", p.clusterIP(31), 80, reach(true, ep(p, NodeBName, 31, 8080))),
	}
}
