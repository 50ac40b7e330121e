package iptables

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// nodePortLB makes p a LoadBalancer port: NodePort 3001, external IP 192.168.99.11, LB IP
// 1.2.3.4.
func nodePortLB(p *proxier.ServicePort) {
	p.NodePort = 3001
	p.ExternalIPs = []netip.Addr{netip.MustParseAddr("192.168.99.11")}
	p.LoadBalancerVIPs = []netip.Addr{netip.MustParseAddr("1.2.3.4")}
}

func TestBuildExternal(t *testing.T) {
	remote, local := ep("10.180.0.1:80", false), ep("10.180.0.2:80", true)
	lbCluster := testPort("ns2/lb", "172.30.0.42", nodePortLB)
	lbLocal := testPort("ns2/lb", "172.30.0.42", func(p *proxier.ServicePort) {
		nodePortLB(p)
		p.ExternalPolicyLocal, p.HealthCheckNodePort = true, 30000
	})
	frontends := func(target string) []string {
		return []string{
			`nat KUBE-SERVICES -m comment --comment "ns2/lb:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j {SVC}`,
			`nat KUBE-SERVICES -m comment --comment "ns2/lb:p80 external IP" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j {EXT}`,
			`nat KUBE-SERVICES -m comment --comment "ns2/lb:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j ` + target,
			`nat KUBE-NODEPORTS -m comment --comment "ns2/lb:p80" -m tcp -p tcp --dport 3001 -j {EXT}`,
		}
	}
	hairpin := []string{
		`nat KUBE-HAIRPIN -m comment --comment "ns2/lb:p80 hairpin 10.180.0.2:80" -m conntrack --ctstate DNAT -s 10.180.0.2 -d 10.180.0.2 -m tcp -p tcp --dport 80 -j KUBE-MARK-MASQ`,
	}
	svcRules := []string{
		`nat {SVC} -m comment --comment "ns2/lb:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`,
		`nat {SVC} -m comment --comment "ns2/lb:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.180.0.1:80`,
		`nat {SVC} -m comment --comment "ns2/lb:p80 -> 10.180.0.2:80" -p tcp -j DNAT --to-destination 10.180.0.2:80`,
	}
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	runBuilderCases(t, []builderCase{{
		name: "eTP Cluster: everything external is masqueraded",
		port: lbCluster, eps: []endpoints.Endpoint{remote, local},
		want: cat(frontends("{EXT}"), hairpin, []string{
			`nat {EXT} -m comment --comment "masquerade traffic for ns2/lb:p80 external destinations" -j KUBE-MARK-MASQ`,
			`nat {EXT} -j {SVC}`,
		}, svcRules),
	}, {
		name: "eTP Local: pods and the host short-circuit, others go to local endpoints",
		port: lbLocal, eps: []endpoints.Endpoint{remote, local},
		want: cat(frontends("{EXT}"), []string{
			`filter KUBE-NODEPORTS -m comment --comment "ns2/lb:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT`,
		}, hairpin, []string{
			`nat {EXT} -m comment --comment "pod traffic for ns2/lb:p80 external destinations" -s 10.0.0.0/8 -j {SVC}`,
			`nat {EXT} -m comment --comment "masquerade LOCAL traffic for ns2/lb:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`,
			`nat {EXT} -m comment --comment "route LOCAL traffic for ns2/lb:p80 external destinations" -m addrtype --src-type LOCAL -j {SVC}`,
			`nat {EXT} -j {SVL}`,
		}, svcRules, []string{
			`nat {SVL} -m comment --comment "ns2/lb:p80 -> 10.180.0.2:80" -p tcp -j DNAT --to-destination 10.180.0.2:80`,
		}),
	}, {
		name: "eTP Local without local endpoints: outside traffic dropped",
		port: lbLocal, eps: []endpoints.Endpoint{remote},
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns2/lb:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j {SVC}`,
			`nat KUBE-SERVICES -m comment --comment "ns2/lb:p80 external IP" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j {EXT}`,
			`filter KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/lb:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j DROP`,
			`nat KUBE-SERVICES -m comment --comment "ns2/lb:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j {EXT}`,
			`filter KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/lb:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP`,
			`nat KUBE-NODEPORTS -m comment --comment "ns2/lb:p80" -m tcp -p tcp --dport 3001 -j {EXT}`,
			`filter KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/lb:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP`,
			`filter KUBE-NODEPORTS -m comment --comment "ns2/lb:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT`,
			`nat {EXT} -m comment --comment "pod traffic for ns2/lb:p80 external destinations" -s 10.0.0.0/8 -j {SVC}`,
			`nat {EXT} -m comment --comment "masquerade LOCAL traffic for ns2/lb:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`,
			`nat {EXT} -m comment --comment "route LOCAL traffic for ns2/lb:p80 external destinations" -m addrtype --src-type LOCAL -j {SVC}`,
			`nat {SVC} -m comment --comment "ns2/lb:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns2/lb:p80 -> 10.180.0.1:80" -p tcp -j DNAT --to-destination 10.180.0.1:80`,
		},
	}})
}

func TestBuildExternalWithoutEndpoints(t *testing.T) {
	runBuilderCases(t, []builderCase{{
		name: "no endpoints: every frontend rejects",
		port: testPort("ns2/lb", "172.30.0.42", nodePortLB),
		want: []string{
			`filter KUBE-SERVICES -m comment --comment "ns2/lb:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j REJECT`,
			`filter KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/lb:p80 has no endpoints" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j REJECT`,
			`filter KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/lb:p80 has no endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j REJECT`,
			`filter KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/lb:p80 has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j REJECT`,
		},
	}})
}

func TestBuildFirewallAndPolicies(t *testing.T) {
	remote, local := ep("10.180.0.1:80", false), ep("10.180.0.2:80", true)
	ranged := testPort("ns3/fw", "172.30.0.43", func(p *proxier.ServicePort) {
		p.LoadBalancerVIPs = []netip.Addr{netip.MustParseAddr("1.2.3.4")}
		p.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/25"), netip.MustParsePrefix("192.168.0.0/24")}
	})
	bothLocal := testPort("ns4/both", "172.30.0.44", func(p *proxier.ServicePort) {
		p.NodePort, p.ExternalPolicyLocal, p.InternalPolicyLocal = 3004, true, true
	})
	runBuilderCases(t, []builderCase{{
		name: "source ranges (one holds the node IP, so the VIP is allowed too)",
		port: ranged, eps: []endpoints.Endpoint{remote},
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns3/fw:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j {SVC}`,
			`nat KUBE-SERVICES -m comment --comment "ns3/fw:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j {FW}`,
			`filter KUBE-PROXY-FIREWALL -m comment --comment "ns3/fw:p80 traffic not accepted by {FW}" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP`,
			`nat {EXT} -m comment --comment "masquerade traffic for ns3/fw:p80 external destinations" -j KUBE-MARK-MASQ`,
			`nat {EXT} -j {SVC}`,
			`nat {FW} -m comment --comment "ns3/fw:p80 loadbalancer IP" -s 203.0.113.0/25 -j {EXT}`,
			`nat {FW} -m comment --comment "ns3/fw:p80 loadbalancer IP" -s 192.168.0.0/24 -j {EXT}`,
			`nat {FW} -m comment --comment "ns3/fw:p80 loadbalancer IP" -s 1.2.3.4 -j {EXT}`,
			`nat {FW} -m comment --comment "other traffic to ns3/fw:p80 will be dropped by KUBE-PROXY-FIREWALL"`,
			`nat {SVC} -m comment --comment "ns3/fw:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns3/fw:p80 -> 10.180.0.1:80" -p tcp -j DNAT --to-destination 10.180.0.1:80`,
		},
	}, {
		name: "iTP Local without local endpoints: ClusterIP traffic dropped",
		port: testPort("ns5/itp", "172.30.0.45", func(p *proxier.ServicePort) { p.InternalPolicyLocal = true }),
		eps:  []endpoints.Endpoint{remote},
		want: []string{
			`filter KUBE-SERVICES -m comment --comment "ns5/itp:p80 has no local endpoints" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j DROP`,
		},
	}, {
		// Upstream keeps the cluster chain for short-circuiting pod and host traffic even
		// when both policies are Local.
		name: "iTP and eTP Local: the cluster chain still exists for short-circuits",
		port: bothLocal, eps: []endpoints.Endpoint{remote, local},
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns4/both:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j {SVL}`,
			`nat KUBE-NODEPORTS -m comment --comment "ns4/both:p80" -m tcp -p tcp --dport 3004 -j {EXT}`,
			`nat KUBE-HAIRPIN -m comment --comment "ns4/both:p80 hairpin 10.180.0.2:80" -m conntrack --ctstate DNAT -s 10.180.0.2 -d 10.180.0.2 -m tcp -p tcp --dport 80 -j KUBE-MARK-MASQ`,
			`nat {EXT} -m comment --comment "pod traffic for ns4/both:p80 external destinations" -s 10.0.0.0/8 -j {SVC}`,
			`nat {EXT} -m comment --comment "masquerade LOCAL traffic for ns4/both:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`,
			`nat {EXT} -m comment --comment "route LOCAL traffic for ns4/both:p80 external destinations" -m addrtype --src-type LOCAL -j {SVC}`,
			`nat {EXT} -j {SVL}`,
			`nat {SVC} -m comment --comment "ns4/both:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.180.0.1:80`,
			`nat {SVC} -m comment --comment "ns4/both:p80 -> 10.180.0.2:80" -p tcp -j DNAT --to-destination 10.180.0.2:80`,
			`nat {SVL} -m comment --comment "ns4/both:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`,
			`nat {SVL} -m comment --comment "ns4/both:p80 -> 10.180.0.2:80" -p tcp -j DNAT --to-destination 10.180.0.2:80`,
		},
	}})
}

func TestNodePortJumps(t *testing.T) {
	const head = `-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" `
	cases := []struct {
		name string
		cfg  Config
		fam  v1.IPFamily
		want []string
	}{
		{"IPv4 all, localhost NodePorts", Config{LocalhostNodePorts: true}, v1.IPv4Protocol,
			[]string{head + "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"}},
		{"IPv4 all, no localhost NodePorts", Config{}, v1.IPv4Protocol,
			[]string{head + "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"}},
		{"IPv6 all", Config{LocalhostNodePorts: true}, v1.IPv6Protocol,
			[]string{head + "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"}},
		{"IPv4 prefixes, loopback without localhost NodePorts dropped", Config{NodePortAddresses: map[v1.IPFamily][]netip.Prefix{
			v1.IPv4Protocol: {netip.MustParsePrefix("192.168.0.0/24"), netip.MustParsePrefix("127.0.0.0/8")}}}, v1.IPv4Protocol,
			[]string{head + "-d 192.168.0.0/24 -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"}},
		{"IPv4 prefixes with loopback and localhost NodePorts", Config{LocalhostNodePorts: true, NodePortAddresses: map[v1.IPFamily][]netip.Prefix{
			v1.IPv4Protocol: {netip.MustParsePrefix("127.0.0.0/8")}}}, v1.IPv4Protocol,
			[]string{head + "-d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"}},
		{"a /0 prefix means all", Config{NodePortAddresses: map[v1.IPFamily][]netip.Prefix{
			v1.IPv6Protocol: {netip.MustParsePrefix("2001:db8::/64"), netip.MustParsePrefix("::/0")}}}, v1.IPv6Protocol,
			[]string{head + "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, r := range newFamilyRules(c.cfg, c.fam).nodePortJumps() {
				got = append(got, r.spec)
			}
			if d := diffLines(c.want, got); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestLocalhostNodePortsOnlyWithLoopback(t *testing.T) {
	only := Config{LocalhostNodePorts: true, NodePortAddresses: map[v1.IPFamily][]netip.Prefix{
		v1.IPv4Protocol: {netip.MustParsePrefix("192.168.0.0/24")}}}
	if newFamilyRules(only, v1.IPv4Protocol).localhostNodePorts {
		t.Errorf("localhost NodePorts on although nodePortAddresses exclude 127.0.0.1")
	}
	fr := newFamilyRules(Config{LocalhostNodePorts: true}, v1.IPv4Protocol)
	if !fr.localhostNodePorts || !fr.usesKubeletFirewall() {
		t.Fatalf("localhost NodePorts off with every local address")
	}
	found := false
	for _, r := range fr.staticRules() {
		if r.chain == ChainKubeletFirewall && r.table == tableFilter {
			found = true
		}
	}
	if !found {
		t.Errorf("no anti-martian rule in KUBE-FIREWALL with localhost NodePorts")
	}
	if newFamilyRules(Config{LocalhostNodePorts: true}, v1.IPv6Protocol).usesKubeletFirewall() {
		t.Errorf("IPv6 uses the anti-martian rule")
	}
}
