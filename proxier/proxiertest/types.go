// Package proxiertest holds the packet-flow cases that every proxy mode must pass, and a
// throwaway network-namespace topology that runs them against the real kernel.
//
// One World (Services and EndpointSlices covering every feature) is programmed once per run;
// each Case sends one packet/connection into it and states what must happen, in words a user
// would use: "from the outside client to 203.0.113.5:80 reaches 10.244.1.2:8080 or
// 10.244.2.2:8080, masqueraded". A backend proves itself two ways:
//
//   - against its own fake (a tracer over what it would program): RunTracer(t, cfg, trace);
//   - against the kernel, as root: RunKernel(t, cfg, newBackend), where newBackend builds the
//     backend for the node's network namespace and the harness feeds it the World.
//
// Address plan (IPv4 / IPv6):
//
//	lan                192.0.2.0/24          2001:db8::/64
//	node-a (the node)  192.0.2.11            2001:db8::11        pods 10.244.1.0/24  fd00:10:244:1::/64 (bridge .1 / ::1)
//	node-b (remote)    192.0.2.12            2001:db8::12        pods 10.244.2.0/24  fd00:10:244:2::/64
//	outside client     192.0.2.100           2001:db8::100
//	cluster CIDR       10.244.0.0/16         fd00:10:244::/48
//	service CIDR       10.96.0.0/16          fd00:10:96::/112
//	LB / external IPs  203.0.113.0/24        2001:db8:ff::/64
package proxiertest

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// Source says where a probe comes from.
type Source string

const (
	// FromLocalPod is a pod on node-a that is not an endpoint of the target Service.
	FromLocalPod Source = "local-pod"
	// FromEndpointPod is the first local endpoint pod of the target Service (hairpin).
	FromEndpointPod Source = "endpoint-pod"
	// FromNode is node-a's own host network namespace.
	FromNode Source = "node"
	// FromOutside is the outside client on the lan.
	FromOutside Source = "outside"
)

// Verdict is what happens to a probe.
type Verdict string

const (
	// Reach: the connection reaches one of Want.Endpoints.
	Reach Verdict = "reach"
	// Reject: the connection is actively refused (TCP RST or ICMP unreachable).
	Reject Verdict = "reject"
	// Drop: nothing answers (timeout).
	Drop Verdict = "drop"
)

// Want is the expected outcome of one Case.
type Want struct {
	// Verdict is reach, reject or drop.
	Verdict Verdict
	// Endpoints are the acceptable "ip:port" destinations (Reach only); the probe must land on
	// one of them, and a Case with several endpoints is probed until each has been seen
	// (bounded), unless AnyOne is set.
	Endpoints []string
	// AnyOne accepts any single endpoint of Endpoints without requiring all to be seen
	// (session affinity cases require the SAME one every time instead, see Sticky).
	AnyOne bool
	// Sticky requires every repeated probe to land on the same endpoint.
	Sticky bool
	// Masquerade is true when the endpoint must see a node address as the source, false when
	// it must see the client's own address.
	Masquerade bool
}

// Case is one probe into the World and its expected outcome.
type Case struct {
	// Name is unique within Cases.
	Name string
	// From is where the probe starts.
	From Source
	// Protocol is TCP or UDP (SCTP cases are traced only; kernel runs skip them: no SCTP sockets).
	Protocol v1.Protocol
	// Dst is the destination address; the zero Addr means "node-a's lan address" (NodePorts).
	Dst netip.Addr
	// Port is the destination port.
	Port int32
	// Want is the expected outcome.
	Want Want
	// Service names the target Service ("ns/name") for readers and logs.
	Service string
}

// Config is the proxy configuration the World assumes; backends build their options from it.
type Config struct {
	// Family is the IP family under test.
	Family v1.IPFamily
	// NodeName is node-a's name.
	NodeName string
	// NodeIP is node-a's lan address.
	NodeIP netip.Addr
	// ClusterCIDR feeds the ClusterCIDR local-traffic detector.
	ClusterCIDR netip.Prefix
	// PodCIDR is node-a's pod CIDR.
	PodCIDR netip.Prefix
	// ServiceCIDR is the service range (unallocated addresses in it are dropped/rejected).
	ServiceCIDR netip.Prefix
	// NodePortAddresses are the addresses NodePorts answer on (CIDRs).
	NodePortAddresses []netip.Prefix
	// MasqueradeBit is the fwmark bit for masquerading.
	MasqueradeBit int
}

// WorldState is the API state of the World for one family.
type WorldState struct {
	// Services are every Service of the World.
	Services []*v1.Service
	// Slices are every EndpointSlice of the World.
	Slices []*discovery.EndpointSlice
	// Node is node-a's Node object (name, addresses, podCIDR, zone label).
	Node *v1.Node
}

// Traced is what a backend's packet tracer says about a Case's packet (the first packet of a
// new connection) when run over the backend's fake ruleset.
type Traced struct {
	// Verdict is reach (DNATed to an endpoint), reject or drop.
	Verdict Verdict
	// Endpoints are every "ip:port" the packet may be DNATed to (Reach only).
	Endpoints []string
	// Masquerade is true when the packet is marked for masquerading.
	Masquerade bool
	// Sticky is true when the path records and honours ClientIP affinity.
	Sticky bool
}
