package iptables

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// testRules is the IPv4 configuration of the builder tests: ClusterCIDR detector 10.0.0.0/8,
// node IP 192.168.0.2, NodePorts on every local address.
func testRules(mutate func(*familyRules)) *familyRules {
	fr := &familyRules{
		family:              v1.IPv4Protocol,
		masqMark:            "0x00004000",
		detector:            proxier.LocalDetector{Mode: proxier.LocalModeClusterCIDR, CIDR: netip.MustParsePrefix("10.0.0.0/8")},
		nodeIPs:             []netip.Addr{netip.MustParseAddr("192.168.0.2")},
		nodePortsOnAllLocal: true,
	}
	if mutate != nil {
		mutate(fr)
	}
	return fr
}

func TestChainNamesMatchUpstream(t *testing.T) {
	// Values verified against upstream kube-proxy's proxier_test.go.
	if got := chainsFor("ns1/svc1:p80", "tcp").cluster; got != "KUBE-SVC-XPGD46QRK7WJZT7O" {
		t.Errorf("cluster chain = %s, want KUBE-SVC-XPGD46QRK7WJZT7O", got)
	}
	if got := endpointChain("ns1/svc1:p80", "tcp", "10.180.0.1:80"); got != "KUBE-SEP-SXIVWICOYRO3J4NJ" {
		t.Errorf("endpoint chain = %s, want KUBE-SEP-SXIVWICOYRO3J4NJ", got)
	}
	for _, name := range []string{"KUBE-SVC-X", "KUBE-SVL-X", "KUBE-EXT-X", "KUBE-FW-X", "KUBE-SEP-X"} {
		if !isServiceChain(name) {
			t.Errorf("isServiceChain(%s) = false", name)
		}
	}
	if isServiceChain(ChainServices) || isServiceChain(ChainMarkMasq) {
		t.Errorf("isServiceChain is true for a top-level chain")
	}
}

func TestProbability(t *testing.T) {
	for n, want := range map[int]string{1: "1.0000000000", 2: "0.5000000000", 3: "0.3333333333", 100001: "0.0000099999"} {
		if got := probability(n); got != want {
			t.Errorf("probability(%d) = %s, want %s", n, got, want)
		}
	}
}

type builderCase struct {
	name  string
	fr    *familyRules
	port  *proxier.ServicePort
	eps   []endpoints.Endpoint
	want  []string
	node  endpoints.Node
	check func(t *testing.T, r *portRules)
}

func runBuilderCases(t *testing.T, cases []builderCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fr := c.fr
			if fr == nil {
				fr = testRules(nil)
			}
			node := c.node
			if node.Name == "" {
				node.Name = testNode
			}
			got := fr.buildPort(c.port, c.eps, node)
			if d := diffLines(expand(c.port, c.want), renderRules(got)); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestBuildClusterIP(t *testing.T) {
	two := []endpoints.Endpoint{ep("10.180.0.1:80", false), ep("10.180.0.2:80", true)}
	plain := testPort("ns1/svc1", "172.30.0.41", nil)
	runBuilderCases(t, []builderCase{{
		name: "two endpoints, masquerade off-cluster sources",
		port: plain, eps: two,
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j {SVC}`,
			`nat KUBE-HAIRPIN -m comment --comment "ns1/svc1:p80 hairpin 10.180.0.2:80" -m conntrack --ctstate DNAT -s 10.180.0.2 -d 10.180.0.2 -m tcp -p tcp --dport 80 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.180.0.1:80`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -p tcp -j DNAT --to-destination 10.180.0.2:80`,
		},
	}, {
		name: "masquerade all",
		fr:   testRules(func(fr *familyRules) { fr.masqueradeAll = true }),
		port: plain, eps: two[:1],
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j {SVC}`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -p tcp -j DNAT --to-destination 10.180.0.1:80`,
		},
	}, {
		name: "interface prefix detector, UDP",
		fr: testRules(func(fr *familyRules) {
			fr.detector = proxier.LocalDetector{Mode: proxier.LocalModeInterfaceNamePrefix, Interface: "veth"}
		}),
		port: testPort("ns1/dns", "172.30.0.10", func(p *proxier.ServicePort) { p.Protocol, p.Name.Protocol, p.Port = v1.ProtocolUDP, v1.ProtocolUDP, 53 }),
		eps:  []endpoints.Endpoint{ep("10.180.0.1:53", false)},
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns1/dns:p80 cluster IP" -m udp -p udp -d 172.30.0.10 --dport 53 -j {SVC}`,
			`nat {SVC} -m comment --comment "ns1/dns:p80 cluster IP" -m udp -p udp -d 172.30.0.10 --dport 53 ! -i veth+ -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns1/dns:p80 -> 10.180.0.1:53" -p udp -j DNAT --to-destination 10.180.0.1:53`,
		},
	}})
}

func TestBuildClusterIPVariants(t *testing.T) {
	two := []endpoints.Endpoint{ep("10.180.0.1:80", false), ep("10.180.0.2:80", true)}
	plain := testPort("ns1/svc1", "172.30.0.41", nil)
	runBuilderCases(t, []builderCase{{
		name: "no detector: no masquerade rule",
		fr:   testRules(func(fr *familyRules) { fr.detector = proxier.LocalDetector{} }),
		port: plain, eps: two[:1],
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j {SVC}`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -p tcp -j DNAT --to-destination 10.180.0.1:80`,
		},
	}, {
		name: "session affinity",
		port: testPort("ns1/svc1", "172.30.0.41", func(p *proxier.ServicePort) { p.ClientIPAffinity, p.StickyMaxAgeSeconds = true, 10800 }),
		eps:  two,
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j {SVC}`,
			`nat KUBE-HAIRPIN -m comment --comment "ns1/svc1:p80 hairpin 10.180.0.2:80" -m conntrack --ctstate DNAT -s 10.180.0.2 -d 10.180.0.2 -m tcp -p tcp --dport 80 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m recent --name {SEP 10.180.0.1:80} --update --seconds 10800 --reap -p tcp -j DNAT --to-destination 10.180.0.1:80`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -m recent --name {SEP 10.180.0.2:80} --update --seconds 10800 --reap -p tcp -j DNAT --to-destination 10.180.0.2:80`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -m recent --name {SEP 10.180.0.1:80} --set -p tcp -j DNAT --to-destination 10.180.0.1:80`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -m recent --name {SEP 10.180.0.2:80} --set -p tcp -j DNAT --to-destination 10.180.0.2:80`,
		},
	}, {
		name: "no endpoints: reject",
		port: plain,
		want: []string{
			`filter KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT`,
		},
	}, {
		name: "only terminating endpoints are used when none is ready",
		port: plain,
		eps: []endpoints.Endpoint{
			{IP: netip.MustParseAddr("10.180.0.1"), Port: 80, NodeName: "node-b", Serving: true, Terminating: true},
			{IP: netip.MustParseAddr("10.180.0.2"), Port: 80, NodeName: "node-b"}, // not serving
		},
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j {SVC}`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -p tcp -j DNAT --to-destination 10.180.0.1:80`,
		},
	}})
}

func TestBuildTopology(t *testing.T) {
	hinted := func(addr string, zone string) endpoints.Endpoint {
		e := ep(addr, false)
		e.Hints = &endpoints.Hints{Zones: []string{zone}}
		return e
	}
	runBuilderCases(t, []builderCase{{
		name: "zone hints pick the node's zone",
		node: endpoints.Node{Name: testNode, Zone: "z1"},
		port: testPort("ns1/svc1", "172.30.0.41", nil),
		eps:  []endpoints.Endpoint{hinted("10.180.0.1:80", "z1"), hinted("10.180.0.2:80", "z2")},
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j {SVC}`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -p tcp -j DNAT --to-destination 10.180.0.1:80`,
		},
	}})
}

func TestBuildIPv6(t *testing.T) {
	fr := testRules(func(fr *familyRules) {
		fr.family = v1.IPv6Protocol
		fr.detector = proxier.LocalDetector{Mode: proxier.LocalModeClusterCIDR, CIDR: netip.MustParsePrefix("fd00:10::/64")}
	})
	runBuilderCases(t, []builderCase{{
		name: "IPv6 endpoint DNAT uses brackets",
		fr:   fr,
		port: testPort("ns1/svc1", "fd00:10:96::1", nil),
		eps:  []endpoints.Endpoint{ep("[fd00:10::5]:80", false)},
		want: []string{
			`nat KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d fd00:10:96::1 --dport 80 -j {SVC}`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d fd00:10:96::1 --dport 80 ! -s fd00:10::/64 -j KUBE-MARK-MASQ`,
			`nat {SVC} -m comment --comment "ns1/svc1:p80 -> [fd00:10::5]:80" -p tcp -j DNAT --to-destination [fd00:10::5]:80`,
		},
	}})
}
