package proxiertest

import (
	"fmt"
	"net/netip"
	"strconv"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Names shared by the World and its Cases.
const (
	// Namespace is the namespace of every Service and EndpointSlice of the World.
	Namespace = "test"
	// NodeAName is the proxy's own node.
	NodeAName = "node-a"
	// NodeBName is the remote node.
	NodeBName = "node-b"
	// NodeAZone is node-a's topology.kubernetes.io/zone label.
	NodeAZone = "z1"
	// MasqueradeBit is the fwmark bit the World's Config asks for.
	MasqueradeBit = 14
	// LocalPodHost is the host number of the non-endpoint client pod on node-a
	// (10.244.1.200 / fd00:10:244:1::c8).
	LocalPodHost = 200
)

// plan maps the documented address plan onto one IP family. Host numbers n are written as
// the last octet in IPv4 and as the last hextet (in hex) in IPv6: 10.244.1.200 and
// fd00:10:244:1::c8 are both host 200 of node-a's pod range.
type plan struct{ v6 bool }

func planFor(family v1.IPFamily) plan { return plan{v6: family == v1.IPv6Protocol} }

// host joins an IPv4 prefix of three octets or an IPv6 prefix ending in "::" with host n.
func (p plan) host(v4Prefix, v6Prefix string, n int) netip.Addr {
	if p.v6 {
		return netip.MustParseAddr(v6Prefix + strconv.FormatInt(int64(n), 16))
	}
	return netip.MustParseAddr(v4Prefix + strconv.Itoa(n))
}

func (p plan) pick(v4, v6 string) string {
	if p.v6 {
		return v6
	}
	return v4
}

// clusterIP returns the n-th address of the service range.
func (p plan) clusterIP(n int) netip.Addr { return p.host("10.96.0.", "fd00:10:96::", n) }

// extIP returns the n-th LoadBalancer / external address.
func (p plan) extIP(n int) netip.Addr { return p.host("203.0.113.", "2001:db8:ff::", n) }

// podIP returns host n of a node's pod range.
func (p plan) podIP(node string, n int) netip.Addr {
	if node == NodeBName {
		return p.host("10.244.2.", "fd00:10:244:2::", n)
	}
	return p.host("10.244.1.", "fd00:10:244:1::", n)
}

// lanIP returns a lan address: node-a, node-b, the outside client, or node-a's probe alias.
func (p plan) lanIP(who string) netip.Addr {
	switch who {
	case NodeAName:
		return netip.MustParseAddr(p.pick("192.0.2.11", "2001:db8::11"))
	case NodeBName:
		return netip.MustParseAddr(p.pick("192.0.2.12", "2001:db8::12"))
	case "probe":
		return netip.MustParseAddr(p.pick("192.0.2.21", "2001:db8::21"))
	default:
		return netip.MustParseAddr(p.pick("192.0.2.100", "2001:db8::100"))
	}
}

// podCIDR returns a node's pod range.
func (p plan) podCIDR(node string) netip.Prefix {
	if node == NodeBName {
		return netip.MustParsePrefix(p.pick("10.244.2.0/24", "fd00:10:244:2::/64"))
	}
	return netip.MustParsePrefix(p.pick("10.244.1.0/24", "fd00:10:244:1::/64"))
}

// hostPrefix returns ip as a single-address prefix (/32 or /128).
func hostPrefix(ip netip.Addr) netip.Prefix { return netip.PrefixFrom(ip, ip.BitLen()) }

// NewConfig returns the proxy configuration the World assumes for one family.
func NewConfig(family v1.IPFamily) Config {
	p := planFor(family)
	return Config{
		Family:            family,
		NodeName:          NodeAName,
		NodeIP:            p.lanIP(NodeAName),
		ClusterCIDR:       netip.MustParsePrefix(p.pick("10.244.0.0/16", "fd00:10:244::/48")),
		PodCIDR:           p.podCIDR(NodeAName),
		ServiceCIDR:       netip.MustParsePrefix(p.pick("10.96.0.0/16", "fd00:10:96::/112")),
		NodePortAddresses: []netip.Prefix{hostPrefix(p.lanIP(NodeAName))},
		MasqueradeBit:     MasqueradeBit,
	}
}

// LocalPodIP returns the address of the non-endpoint client pod on node-a (FromLocalPod).
func LocalPodIP(family v1.IPFamily) netip.Addr { return planFor(family).podIP(NodeAName, LocalPodHost) }

// OutsideClientIP returns the outside client's lan address (FromOutside).
func OutsideClientIP(family v1.IPFamily) netip.Addr { return planFor(family).lanIP("outside") }

// NodeProbeIP returns the secondary lan address of node-a that kernel FromNode probes are sent
// from: node-a's primary address cannot tell a masqueraded reply from an unmasqueraded one
// when the endpoint is on node-b (both show the primary address), an alias can. It is never
// chosen by the kernel as a source on its own (IPv4 secondary, IPv6 deprecated).
func NodeProbeIP(family v1.IPFamily) netip.Addr { return planFor(family).lanIP("probe") }

// SourceAddr returns the source address a tracer should use for c: the client pod, node-a's
// lan address (cfg.NodeIP), the outside client, or the Service's first local endpoint pod
// (the first endpoint of its EndpointSlices in World order whose nodeName is cfg.NodeName).
// It returns the zero Addr when c is FromEndpointPod and the Service has no local endpoint.
func SourceAddr(cfg Config, c Case) netip.Addr {
	switch c.From {
	case FromLocalPod:
		return LocalPodIP(cfg.Family)
	case FromNode:
		return cfg.NodeIP
	case FromOutside:
		return OutsideClientIP(cfg.Family)
	case FromEndpointPod:
		return firstLocalEndpoint(World(cfg.Family), c.Service, cfg.NodeName)
	}
	return netip.Addr{}
}

// DestinationAddr returns c.Dst, or cfg.NodeIP when c.Dst is the zero Addr (NodePorts).
func DestinationAddr(cfg Config, c Case) netip.Addr {
	if c.Dst.IsValid() {
		return c.Dst
	}
	return cfg.NodeIP
}

// firstLocalEndpoint returns the first endpoint address of svc ("ns/name") on nodeName.
func firstLocalEndpoint(w *WorldState, svc, nodeName string) netip.Addr {
	for _, s := range w.Slices {
		if Namespace+"/"+s.Labels[discovery.LabelServiceName] != svc || s.Namespace != Namespace {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.NodeName != nil && *ep.NodeName == nodeName && len(ep.Addresses) > 0 {
				if ip, err := netip.ParseAddr(ep.Addresses[0]); err == nil {
					return ip
				}
			}
		}
	}
	return netip.Addr{}
}

// World returns the API state of the World for one family: one small Service per feature,
// its EndpointSlice, and node-a's Node object. Every call returns fresh objects.
func World(family v1.IPFamily) *WorldState {
	p := planFor(family)
	w := &WorldState{Node: nodeA(p, family)}
	for _, spec := range worldSpecs() {
		svc := spec.service(p, family)
		w.Services = append(w.Services, svc)
		if spec.noSlice {
			continue
		}
		slice := spec.slice(p, family)
		labelHeadlessSlice(slice, svc)
		w.Slices = append(w.Slices, slice)
	}
	return w
}

// nodeA returns node-a's Node object.
func nodeA(p plan, family v1.IPFamily) *v1.Node {
	cidr := p.podCIDR(NodeAName).String()
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: NodeAName,
			Labels: map[string]string{
				v1.LabelHostname:     NodeAName,
				v1.LabelTopologyZone: NodeAZone,
			},
		},
		Spec: v1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: p.lanIP(NodeAName).String()},
			{Type: v1.NodeHostName, Address: NodeAName},
		}},
	}
}

// epState is an endpoint's condition set.
type epState int

const (
	ready       epState = iota // ready, serving, not terminating
	terminating                // not ready, serving, terminating
	notReady                   // not ready, not serving, not terminating
)

// epSpec is one endpoint of a Service: host n on node, in state, with an optional zone hint.
type epSpec struct {
	node  string
	n     int
	state epState
	zone  string
}

// portSpec is one Service port.
type portSpec struct {
	name     string
	protocol v1.Protocol
	port     int32
	target   int32
	nodePort int32
}

// svcSpec describes one Service of the World and its EndpointSlice.
type svcSpec struct {
	name    string
	n       int // the Service's ClusterIP host number (0: headless or ExternalName)
	ports   []portSpec
	eps     []epSpec
	noSlice bool
	mutate  func(svc *v1.Service, p plan)
}

// service builds the Service object.
func (s svcSpec) service(p plan, family v1.IPFamily) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: s.name},
		Spec: v1.ServiceSpec{
			Type:           v1.ServiceTypeClusterIP,
			Selector:       map[string]string{"app": s.name},
			IPFamilies:     []v1.IPFamily{family},
			IPFamilyPolicy: ptr.To(v1.IPFamilyPolicySingleStack),
		},
	}
	if s.n > 0 {
		ip := p.clusterIP(s.n).String()
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ip, []string{ip}
	}
	for _, sp := range s.ports {
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{
			Name:       sp.name,
			Protocol:   sp.protocol,
			Port:       sp.port,
			TargetPort: intstr.FromInt32(sp.target),
			NodePort:   sp.nodePort,
		})
	}
	if s.mutate != nil {
		s.mutate(svc, p)
	}
	return svc
}

// slice builds the Service's EndpointSlice (possibly with no endpoints).
func (s svcSpec) slice(p plan, family v1.IPFamily) *discovery.EndpointSlice {
	addrType := discovery.AddressTypeIPv4
	if family == v1.IPv6Protocol {
		addrType = discovery.AddressTypeIPv6
	}
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: Namespace,
			Name:      fmt.Sprintf("%s-%s", s.name, p.pick("v4", "v6")),
			Labels: map[string]string{
				discovery.LabelServiceName: s.name,
				discovery.LabelManagedBy:   "endpointslice-controller.k8s.io",
			},
		},
		AddressType: addrType,
		Endpoints:   []discovery.Endpoint{},
	}
	for _, sp := range s.ports {
		es.Ports = append(es.Ports, discovery.EndpointPort{
			Name:     ptr.To(sp.name),
			Protocol: ptr.To(sp.protocol),
			Port:     ptr.To(sp.target),
		})
	}
	for _, e := range s.eps {
		es.Endpoints = append(es.Endpoints, e.endpoint(p, s.name))
	}
	return es
}

// endpoint builds one discovery endpoint.
func (e epSpec) endpoint(p plan, svcName string) discovery.Endpoint {
	ep := discovery.Endpoint{
		Addresses: []string{p.podIP(e.node, e.n).String()},
		NodeName:  ptr.To(e.node),
		TargetRef: &v1.ObjectReference{Kind: "Pod", Namespace: Namespace, Name: fmt.Sprintf("%s-%s-%d", svcName, e.node, e.n)},
	}
	switch e.state {
	case ready:
		ep.Conditions = discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}
	case terminating:
		ep.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	case notReady:
		ep.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
	}
	if e.zone != "" {
		ep.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: e.zone}}}
	}
	if e.node == NodeAName {
		ep.Zone = ptr.To(NodeAZone)
	}
	return ep
}
