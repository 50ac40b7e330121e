package proxiertest

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

// Ports used throughout the World.
var (
	httpPort    = portSpec{name: "http", protocol: v1.ProtocolTCP, port: 80, target: 8080}
	dnsUDPPort  = portSpec{name: "dns", protocol: v1.ProtocolUDP, port: 53, target: 5353}
	dnsTCPPort  = portSpec{name: "dns-tcp", protocol: v1.ProtocolTCP, port: 53, target: 5353}
	sctpPort    = portSpec{name: "sctp", protocol: v1.ProtocolSCTP, port: 9000, target: 9000}
	metricsPort = portSpec{name: "metrics", protocol: v1.ProtocolTCP, port: 9090, target: 9091}
)

// withNodePort returns sp with a node port.
func withNodePort(sp portSpec, nodePort int32) portSpec {
	sp.nodePort = nodePort
	return sp
}

// two returns a ready endpoint of host n on each node.
func two(n int) []epSpec {
	return []epSpec{{node: NodeAName, n: n}, {node: NodeBName, n: n}}
}

// typed returns a mutation setting the Service type and, optionally, more fields.
func typed(t v1.ServiceType, more func(svc *v1.Service, p plan)) func(*v1.Service, plan) {
	return func(svc *v1.Service, p plan) {
		svc.Spec.Type = t
		if t == v1.ServiceTypeNodePort || t == v1.ServiceTypeLoadBalancer {
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
		}
		if more != nil {
			more(svc, p)
		}
	}
}

// etpLocal sets externalTrafficPolicy: Local.
func etpLocal(svc *v1.Service, _ plan) {
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
}

// itpLocal sets internalTrafficPolicy: Local.
func itpLocal(svc *v1.Service, _ plan) {
	svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
}

// loadBalancer returns a mutation giving a LoadBalancer Service the ingress IP extIP(n) and
// the source ranges (the outside client's own address, or a range that excludes it).
func loadBalancer(n int, allowClient bool) func(*v1.Service, plan) {
	return typed(v1.ServiceTypeLoadBalancer, func(svc *v1.Service, p plan) {
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: p.extIP(n).String()}}
		if allowClient {
			svc.Spec.LoadBalancerSourceRanges = []string{hostPrefix(p.lanIP("outside")).String()}
		} else {
			svc.Spec.LoadBalancerSourceRanges = []string{p.pick("198.51.100.0/24", "2001:db8:bad::/64")}
		}
	})
}

// worldSpecs lists every Service of the World. The ClusterIP host number n also names the
// endpoint pods (host n on node-a and/or node-b), so 10.96.0.10 is served by 10.244.1.10 and
// 10.244.2.10. Node ports are 30000+n (30000+n+1 for a second port).
func worldSpecs() []svcSpec {
	return []svcSpec{
		{name: "plain", n: 10, ports: []portSpec{httpPort}, eps: two(10)},
		{name: "dns", n: 11, ports: []portSpec{dnsUDPPort, dnsTCPPort}, eps: two(11)},
		{name: "sctp", n: 12, ports: []portSpec{sctpPort}, eps: []epSpec{{node: NodeBName, n: 12}}},
		{name: "multiport", n: 13, ports: []portSpec{httpPort, metricsPort}, eps: two(13)},
		{name: "nodeport", n: 14, eps: two(14),
			ports:  []portSpec{withNodePort(httpPort, 30014), withNodePort(dnsUDPPort, 30015)},
			mutate: typed(v1.ServiceTypeNodePort, nil)},
		{name: "nodeport-local", n: 15, eps: two(15),
			ports: []portSpec{withNodePort(httpPort, 30016)},
			mutate: typed(v1.ServiceTypeNodePort, func(svc *v1.Service, p plan) {
				etpLocal(svc, p)
				svc.Spec.ExternalIPs = []string{p.extIP(15).String()}
			})},
		{name: "nodeport-local-remote", n: 16, eps: []epSpec{{node: NodeBName, n: 16}},
			ports:  []portSpec{withNodePort(httpPort, 30017)},
			mutate: typed(v1.ServiceTypeNodePort, etpLocal)},
		{name: "lb", n: 17, eps: two(17), ports: []portSpec{withNodePort(httpPort, 30018)},
			mutate: loadBalancer(17, true)},
		{name: "lb-blocked", n: 18, eps: []epSpec{{node: NodeAName, n: 18}},
			ports: []portSpec{withNodePort(httpPort, 30019)}, mutate: loadBalancer(18, false)},
		{name: "external-ip", n: 20, eps: two(20), ports: []portSpec{httpPort},
			mutate: func(svc *v1.Service, p plan) { svc.Spec.ExternalIPs = []string{p.extIP(20).String()} }},
		{name: "itp-local", n: 21, eps: two(21), ports: []portSpec{httpPort}, mutate: itpLocal},
		{name: "itp-local-remote", n: 22, eps: []epSpec{{node: NodeBName, n: 22}},
			ports: []portSpec{httpPort}, mutate: itpLocal},
		{name: "affinity", n: 23, eps: two(23), ports: []portSpec{httpPort},
			mutate: func(svc *v1.Service, _ plan) { svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP }},
		{name: "no-endpoints", n: 24, eps: nil,
			ports:  []portSpec{withNodePort(httpPort, 30024), withNodePort(dnsUDPPort, 30025)},
			mutate: typed(v1.ServiceTypeNodePort, nil)},
		{name: "terminating-only", n: 25, ports: []portSpec{httpPort},
			eps: []epSpec{{node: NodeAName, n: 25, state: terminating}, {node: NodeBName, n: 25, state: terminating}}},
		{name: "ready-and-terminating", n: 26, ports: []portSpec{httpPort},
			eps: []epSpec{{node: NodeAName, n: 26}, {node: NodeBName, n: 26, state: terminating}}},
		{name: "not-ready", n: 27, ports: []portSpec{httpPort},
			eps: []epSpec{{node: NodeAName, n: 27}, {node: NodeBName, n: 27, state: notReady}}},
		{name: "headless", n: 0, ports: []portSpec{httpPort}, eps: []epSpec{{node: NodeAName, n: 28}},
			mutate: headless},
		{name: "external-name", n: 0, noSlice: true,
			mutate: typed(v1.ServiceTypeExternalName, func(svc *v1.Service, _ plan) {
				svc.Spec.ExternalName = "example.com"
				svc.Spec.Selector, svc.Spec.IPFamilies, svc.Spec.IPFamilyPolicy = nil, nil, nil
			})},
		{name: "other-proxy", n: 30, ports: []portSpec{httpPort}, eps: []epSpec{{node: NodeAName, n: 30}},
			mutate: func(svc *v1.Service, _ plan) {
				svc.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "other-proxy"}
			}},
		{name: "topology", n: 31, ports: []portSpec{httpPort},
			eps: []epSpec{
				{node: NodeAName, n: 31, zone: "z2"},
				{node: NodeBName, n: 31, zone: NodeAZone},
				{node: NodeBName, n: 32, zone: "z2"},
			},
			mutate: func(svc *v1.Service, _ plan) {
				svc.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameZone)
			}},
		{name: "hairpin", n: 33, ports: []portSpec{httpPort}, eps: []epSpec{{node: NodeAName, n: 33}}},
	}
}

// headless makes a Service headless.
func headless(svc *v1.Service, _ plan) {
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = v1.ClusterIPNone, []string{v1.ClusterIPNone}
}

// labelHeadlessSlice gives the slice of a headless Service the label the EndpointSlice
// controller sets on it.
func labelHeadlessSlice(s *discovery.EndpointSlice, svc *v1.Service) {
	if svc.Spec.ClusterIP == v1.ClusterIPNone {
		s.Labels[v1.IsHeadlessService] = ""
	}
}
