// Package endpoints turns EndpointSlices into per-service-port endpoint lists and chooses, for
// one service port on one node, which endpoints its traffic may go to.
//
// It is the bottom of the import graph (cmd → backends → proxier → endpoints) and is shared by
// every backend, so that nftables, iptables and userspace modes pick the same endpoints:
//
//	cache := endpoints.NewSliceCache(v1.IPv4Protocol, "node-a")
//	cache.Update(slice, false)                   // informer events
//	eps := cache.EndpointsFor(svcName)           // map[ServicePortName][]Endpoint
//	choice := endpoints.Choose(eps[port], policy, endpoints.Node{Name: "node-a", Zone: "z1"})
package endpoints

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ServicePortName identifies one port of one Service: the key of every per-port map in the proxy.
type ServicePortName struct {
	types.NamespacedName
	// Port is the service port's name ("" for a single unnamed port).
	Port string
	// Protocol is TCP, UDP or SCTP.
	Protocol v1.Protocol
}

// String formats the name as upstream kube-proxy does: "ns/name" or "ns/name:port" (no protocol).
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return n.NamespacedName.String() + ":" + n.Port
}

// Endpoint is one backend of a service port as published in an EndpointSlice. The proxy holds
// one per endpoint and port (a million at 100,000 endpoints), so the fields are laid out to
// keep it at 56 bytes.
type Endpoint struct {
	// IP is the endpoint's first address (upstream uses only Addresses[0]).
	IP netip.Addr
	// NodeName is the node the endpoint runs on ("" if unknown).
	NodeName string
	// Port is the endpoint's target port.
	Port int32
	// Local is true when NodeName is this proxy's node.
	Local bool
	// Ready is Conditions.Ready (nil counts as true).
	Ready bool
	// Serving is Conditions.Serving (nil counts as true).
	Serving bool
	// Terminating is Conditions.Terminating (nil counts as false).
	Terminating bool
	// Hints are the slice's topology hints; nil when it gives none. Shared, never modified.
	Hints *Hints
}

// Hints are an endpoint's topology hints.
type Hints struct {
	// Zones are hints.forZones names; nil when the slice gives none.
	Zones []string
	// Nodes are hints.forNodes names; nil when the slice gives none.
	Nodes []string
}

// ZoneHints returns the endpoint's hints.forZones names (nil when none).
func (e Endpoint) ZoneHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.Zones
}

// NodeHints returns the endpoint's hints.forNodes names (nil when none).
func (e Endpoint) NodeHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.Nodes
}

// AddrPort returns the endpoint's IP and port.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, uint16(e.Port)) }

// String returns "ip:port" ("[ip]:port" for IPv6), the upstream endpoint key.
func (e Endpoint) String() string {
	return netip.AddrPortFrom(e.IP, uint16(e.Port)).String()
}

// Policy is what endpoint choice needs to know about a service port's traffic policies.
type Policy struct {
	// ExternallyAccessible is true when the port has a NodePort, a LoadBalancer IP or an external IP.
	ExternallyAccessible bool
	// InternalLocal is internalTrafficPolicy: Local.
	InternalLocal bool
	// ExternalLocal is externalTrafficPolicy: Local (it only matters when ExternallyAccessible).
	ExternalLocal bool
}

// UsesClusterEndpoints reports whether some traffic class of the port goes to cluster-wide
// endpoints: internal traffic under internalTrafficPolicy Cluster, and any externally accessible
// port, since even with externalTrafficPolicy Local, traffic from pods and from the node itself
// to an external destination short-circuits to the cluster-wide endpoints (as upstream).
func (p Policy) UsesClusterEndpoints() bool {
	return !p.InternalLocal || p.ExternallyAccessible
}

// UsesLocalEndpoints reports whether some traffic class of the port goes to node-local endpoints only.
func (p Policy) UsesLocalEndpoints() bool {
	return p.InternalLocal || (p.ExternallyAccessible && p.ExternalLocal)
}

// Node is the proxy's own node as endpoint choice sees it.
type Node struct {
	// Name is the node name (hostname override or the OS hostname).
	Name string
	// Zone is the node's topology.kubernetes.io/zone label ("" when unset).
	Zone string
}

// Choice is the outcome of Choose for one service port.
type Choice struct {
	// Cluster are the endpoints for Cluster-policy traffic (nil unless the policy uses them).
	Cluster []Endpoint
	// Local are the node-local endpoints for Local-policy traffic (nil unless the policy uses them).
	Local []Endpoint
	// AllReachable is Cluster ∪ Local, sorted by String().
	AllReachable []Endpoint
	// HasAny is true when any endpoint anywhere is ready, or serving and terminating.
	HasAny bool
}

// ZoneLabel is the node label endpoint choice reads the zone from.
const ZoneLabel = v1.LabelTopologyZone
