package nftables

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

var epLocal, epRemote, epRemote2 = ep{ip: "10.0.1.1"}, ep{ip: "10.0.2.1"}, ep{ip: "10.0.2.2"}

// buildPortCases are the service ports TestBuildPort builds, with the elements and chains each
// must ask for.
var buildPortCases = []struct {
	name   string
	svc    *v1.Service
	eps    []ep
	elems  []string
	chains []string
}{{
	name: "ClusterIP with a local and a remote endpoint",
	svc:  makeService("a", "172.30.0.1"),
	eps:  []ep{epLocal, epRemote},
	elems: []string{
		`cluster-ips 172.30.0.1`,
		`hairpin-connections 10.0.1.1 . 10.0.1.1 . tcp . 8080`,
		`service-ips 172.30.0.1 . tcp . 80 comment "ns/a:p80" : goto dnat-vip-2`,
		`vip-endpoints 172.30.0.1 . tcp . 80 . 0 : 10.0.1.1 . 8080`,
		`vip-endpoints 172.30.0.1 . tcp . 80 . 1 : 10.0.2.1 . 8080`,
	},
	chains: []string{"dnat-vip-2"},
}, {
	name: "no endpoints: ClusterIP and NodePort reject",
	svc:  makeService("b", "172.30.0.2", withNodePort(30002), withProtocol(v1.ProtocolUDP)),
	elems: []string{
		`cluster-ips 172.30.0.2`,
		`no-endpoint-services 172.30.0.2 . udp . 80 comment "ns/b:p80" : goto reject-chain`,
		`no-endpoint-nodeports udp . 30002 comment "ns/b:p80" : goto reject-chain`,
	},
}, {
	name: "internalTrafficPolicy Local without local endpoints drops ClusterIP traffic",
	svc:  makeService("c", "172.30.0.3", withITPLocal),
	eps:  []ep{epRemote},
	elems: []string{
		`cluster-ips 172.30.0.3`,
		`no-endpoint-services 172.30.0.3 . tcp . 80 comment "ns/c:p80" : drop`,
	},
}, {
	name: "externalTrafficPolicy Local: a second endpoint class for outside traffic",
	svc:  makeService("d", "172.30.0.4", withNodePort(30004), withLB("1.2.3.4"), withETPLocal),
	eps:  []ep{epLocal, epRemote},
	elems: []string{
		`cluster-ips 172.30.0.4`,
		`hairpin-connections 10.0.1.1 . 10.0.1.1 . tcp . 8080`,
		`nodeport-endpoints tcp . 30004 . 0 : 10.0.1.1 . 8080`,
		`nodeport-endpoints tcp . 30004 . 1 : 10.0.2.1 . 8080`,
		`nodeport-local-endpoints tcp . 30004 . 0 : 10.0.1.1 . 8080`,
		`service-ips 1.2.3.4 . tcp . 80 comment "ns/d:p80" : goto external-local-dnat-vip-2`,
		`service-ips 172.30.0.4 . tcp . 80 comment "ns/d:p80" : goto dnat-vip-2`,
		`service-ips-local 1.2.3.4 . tcp . 80 comment "ns/d:p80" : goto dnat-vip-local-1`,
		`service-nodeports tcp . 30004 comment "ns/d:p80" : goto external-local-dnat-nodeport-2`,
		`service-nodeports-local tcp . 30004 comment "ns/d:p80" : goto dnat-nodeport-local-1`,
		`vip-endpoints 1.2.3.4 . tcp . 80 . 0 : 10.0.1.1 . 8080`,
		`vip-endpoints 1.2.3.4 . tcp . 80 . 1 : 10.0.2.1 . 8080`,
		`vip-endpoints 172.30.0.4 . tcp . 80 . 0 : 10.0.1.1 . 8080`,
		`vip-endpoints 172.30.0.4 . tcp . 80 . 1 : 10.0.2.1 . 8080`,
		`vip-local-endpoints 1.2.3.4 . tcp . 80 . 0 : 10.0.1.1 . 8080`,
	},
	chains: []string{"dnat-nodeport-2", "dnat-nodeport-local-1", "dnat-vip-2", "dnat-vip-local-1",
		"external-local-dnat-nodeport-2", "external-local-dnat-vip-2"},
}, {
	name: "externalTrafficPolicy Local without local endpoints: short-circuit only, outside traffic dropped",
	svc:  makeService("e", "172.30.0.5", withNodePort(30005), withETPLocal),
	eps:  []ep{epRemote},
	elems: []string{
		`cluster-ips 172.30.0.5`,
		`no-endpoint-nodeports tcp . 30005 comment "ns/e:p80" : drop`,
		`nodeport-endpoints tcp . 30005 . 0 : 10.0.2.1 . 8080`,
		`service-ips 172.30.0.5 . tcp . 80 comment "ns/e:p80" : goto dnat-vip-1`,
		`service-nodeports tcp . 30005 comment "ns/e:p80" : goto external-local-dnat-nodeport-1`,
		`vip-endpoints 172.30.0.5 . tcp . 80 . 0 : 10.0.2.1 . 8080`,
	},
	chains: []string{"dnat-nodeport-1", "dnat-vip-1", "external-local-dnat-nodeport-1"},
}, {
	name: "LoadBalancer source ranges (one holds the node IP, one nested in another)",
	svc: makeService("f", "172.30.0.6", withLB("5.6.7.8", "5.6.7.9"),
		withSourceRanges("192.168.0.0/24", "10.0.0.0/8", " 10.1.0.0/16")),
	eps: []ep{epRemote},
	elems: []string{
		`cluster-ips 172.30.0.6`,
		`firewall-allow 5.6.7.8 . tcp . 80 . 10.0.0.0/8`,
		`firewall-allow 5.6.7.8 . tcp . 80 . 192.168.0.0/24`,
		`firewall-allow 5.6.7.8 . tcp . 80 . 5.6.7.8`,
		`firewall-allow 5.6.7.8 . tcp . 80 . 5.6.7.9`,
		`firewall-allow 5.6.7.9 . tcp . 80 . 10.0.0.0/8`,
		`firewall-allow 5.6.7.9 . tcp . 80 . 192.168.0.0/24`,
		`firewall-allow 5.6.7.9 . tcp . 80 . 5.6.7.8`,
		`firewall-allow 5.6.7.9 . tcp . 80 . 5.6.7.9`,
		`firewall-ips 5.6.7.8 . tcp . 80 comment "ns/f:p80"`,
		`firewall-ips 5.6.7.9 . tcp . 80 comment "ns/f:p80"`,
		`service-ips 172.30.0.6 . tcp . 80 comment "ns/f:p80" : goto dnat-vip-1`,
		`service-ips 5.6.7.8 . tcp . 80 comment "ns/f:p80" : goto external-dnat-vip-1`,
		`service-ips 5.6.7.9 . tcp . 80 comment "ns/f:p80" : goto external-dnat-vip-1`,
		`vip-endpoints 172.30.0.6 . tcp . 80 . 0 : 10.0.2.1 . 8080`,
		`vip-endpoints 5.6.7.8 . tcp . 80 . 0 : 10.0.2.1 . 8080`,
		`vip-endpoints 5.6.7.9 . tcp . 80 . 0 : 10.0.2.1 . 8080`,
	},
	chains: []string{"dnat-vip-1", "external-dnat-vip-1"},
}, {
	name: "ClientIP affinity: sticky chains per count and timeout",
	svc:  makeService("g", "172.30.0.7", withAffinity(300), withExternalIPs("1.2.3.7")),
	eps:  []ep{epRemote, epRemote2},
	elems: []string{
		`cluster-ips 172.30.0.7`,
		`service-ips 1.2.3.7 . tcp . 80 comment "ns/g:p80" : goto external-sticky-vip-300s-2`,
		`service-ips 172.30.0.7 . tcp . 80 comment "ns/g:p80" : goto sticky-vip-300s-2`,
		`vip-endpoints 1.2.3.7 . tcp . 80 . 0 : 10.0.2.1 . 8080`,
		`vip-endpoints 1.2.3.7 . tcp . 80 . 1 : 10.0.2.2 . 8080`,
		`vip-endpoints 172.30.0.7 . tcp . 80 . 0 : 10.0.2.1 . 8080`,
		`vip-endpoints 172.30.0.7 . tcp . 80 . 1 : 10.0.2.2 . 8080`,
	},
	chains: []string{"external-sticky-vip-300s-2", "sticky-vip-300s-2", "sticky-vip-300s-slot-0", "sticky-vip-300s-slot-1"},
}, {
	name: "terminating endpoints are used only when none is ready",
	svc:  makeService("h", "172.30.0.8"),
	eps:  []ep{{ip: "10.0.2.1", flags: "terminating"}, {ip: "10.0.2.3"}, {ip: "10.0.2.4", flags: "notready"}},
	elems: []string{
		`cluster-ips 172.30.0.8`,
		`service-ips 172.30.0.8 . tcp . 80 comment "ns/h:p80" : goto dnat-vip-1`,
		`vip-endpoints 172.30.0.8 . tcp . 80 . 0 : 10.0.2.3 . 8080`,
	},
	chains: []string{"dnat-vip-1"},
}, {
	name: "both traffic policies Local: pods still short-circuit to every endpoint",
	svc:  makeService("i", "172.30.0.9", withNodePort(30009), withETPLocal, withITPLocal),
	eps:  []ep{epLocal, epRemote},
	elems: []string{
		`cluster-ips 172.30.0.9`,
		`hairpin-connections 10.0.1.1 . 10.0.1.1 . tcp . 8080`,
		`nodeport-endpoints tcp . 30009 . 0 : 10.0.1.1 . 8080`,
		`nodeport-endpoints tcp . 30009 . 1 : 10.0.2.1 . 8080`,
		`nodeport-local-endpoints tcp . 30009 . 0 : 10.0.1.1 . 8080`,
		`service-ips 172.30.0.9 . tcp . 80 comment "ns/i:p80" : goto dnat-vip-1`,
		`service-nodeports tcp . 30009 comment "ns/i:p80" : goto external-local-dnat-nodeport-2`,
		`service-nodeports-local tcp . 30009 comment "ns/i:p80" : goto dnat-nodeport-local-1`,
		`vip-endpoints 172.30.0.9 . tcp . 80 . 0 : 10.0.1.1 . 8080`,
	},
	chains: []string{"dnat-nodeport-2", "dnat-nodeport-local-1", "dnat-vip-1", "external-local-dnat-nodeport-2"},
}}

// TestBuildPort checks the elements and chains one service port asks for.
func TestBuildPort(t *testing.T) {
	fc := testFamilyConfig(t, testConfig())
	for _, tc := range buildPortCases {
		t.Run(tc.name, func(t *testing.T) {
			slice := makeSlice(tc.svc.Name, tc.eps...)
			st := buildPort(fc, portOf(t, tc.svc), endpointsOf(t, slice), testEnvNode(), nil, nil)
			elems, chains := renderPort(fc, st)
			if d := diffLines(elems, tc.elems); d != "" {
				t.Errorf("elements:%s", d)
			}
			if strings.Join(chains, ",") != strings.Join(tc.chains, ",") {
				t.Errorf("chains %v, want %v", chains, tc.chains)
			}
		})
	}
}
