package conntrack

import (
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// frontendKey identifies a service frontend: protocol, IP and port.
type frontendKey struct {
	protocol uint8
	addr     netip.Addr
	port     uint16
}

// nodePortKey identifies a node port: protocol and port, on any address.
type nodePortKey struct {
	protocol uint8
	port     uint16
}

// endpointSet is a set of serving endpoints.
type endpointSet map[netip.AddrPort]struct{}

// union returns a set holding the members of both sets: s itself when other
// is empty, else a new set. Sets are never modified once indexed, so they
// may be shared between keys.
func (s endpointSet) union(other endpointSet) endpointSet {
	if len(other) == 0 {
		return s
	}
	merged := make(endpointSet, len(s)+len(other))
	for ep := range s {
		merged[ep] = struct{}{}
	}
	for ep := range other {
		merged[ep] = struct{}{}
	}
	return merged
}

// staleFlowFilter is a netlink.CustomConntrackFilter matching stale flows by
// map lookups, so one pass over the table costs O(flows).
type staleFlowFilter struct {
	frontends map[frontendKey]endpointSet
	nodePorts map[nodePortKey]endpointSet
}

var _ netlink.CustomConntrackFilter = (*staleFlowFilter)(nil)

// newStaleFlowFilter indexes the cleanable targets of family; SCTP targets
// only when withSCTP. When several targets share a frontend or node port, a
// flow is kept if its reply source serves any of them.
func newStaleFlowFilter(family v1.IPFamily, targets []Target, withSCTP bool) *staleFlowFilter {
	f := &staleFlowFilter{
		frontends: make(map[frontendKey]endpointSet),
		nodePorts: make(map[nodePortKey]endpointSet),
	}
	skippedSCTP := 0
	for i := range targets {
		if targets[i].Protocol == v1.ProtocolSCTP && !withSCTP {
			skippedSCTP++
			continue
		}
		f.add(family, &targets[i])
	}
	if skippedSCTP > 0 {
		klog.V(2).InfoS("Not cleaning SCTP conntrack flows: this Cleaner's netlink handle does not decode SCTP ports",
			"ipFamily", family, "sctpTargets", skippedSCTP)
	}
	return f
}

// add indexes one target, skipping (with a log line) what cannot match.
func (f *staleFlowFilter) add(family v1.IPFamily, t *Target) {
	protocol, ok := ipProtocolOf(t.Protocol)
	if !ok {
		klog.V(5).InfoS("Not cleaning conntrack flows of this protocol", "protocol", t.Protocol, "port", t.Port)
		return
	}
	if t.Port < 1 || t.Port > 65535 || t.NodePort < 0 || t.NodePort > 65535 {
		klog.InfoS("Skipping conntrack cleanup target with an invalid port", "protocol", t.Protocol, "port", t.Port, "nodePort", t.NodePort)
		return
	}
	serving := make(endpointSet, len(t.Serving))
	for _, ep := range t.Serving {
		if !ep.IsValid() {
			klog.InfoS("Ignoring invalid serving endpoint in conntrack cleanup target", "protocol", t.Protocol, "port", t.Port)
			continue
		}
		serving[netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())] = struct{}{}
	}
	for _, vip := range t.VIPs {
		vip = vip.Unmap()
		if !vip.IsValid() || familyOf(vip) != family {
			klog.V(5).InfoS("Skipping conntrack cleanup frontend of another family", "ipFamily", family, "vip", vip)
			continue
		}
		key := frontendKey{protocol: protocol, addr: vip, port: uint16(t.Port)}
		f.frontends[key] = serving.union(f.frontends[key])
	}
	if t.NodePort != 0 && len(serving) > 0 {
		key := nodePortKey{protocol: protocol, port: uint16(t.NodePort)}
		f.nodePorts[key] = serving.union(f.nodePorts[key])
	}
}

// empty reports whether the filter cannot match any flow.
func (f *staleFlowFilter) empty() bool {
	return len(f.frontends) == 0 && len(f.nodePorts) == 0
}

// MatchConntrackFlow reports whether flow is stale. A flow to a known
// frontend is judged by that frontend's endpoints only; the node-port match
// applies to destinations that are not a known frontend.
func (f *staleFlowFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	protocol := flow.Forward.Protocol
	if protocol != unix.IPPROTO_UDP && protocol != unix.IPPROTO_SCTP {
		return false
	}
	dst, ok := netip.AddrFromSlice(flow.Forward.DstIP)
	if !ok {
		return false
	}
	replySrcIP, ok := netip.AddrFromSlice(flow.Reverse.SrcIP)
	if !ok {
		return false
	}
	replySrc := netip.AddrPortFrom(replySrcIP.Unmap(), flow.Reverse.SrcPort)

	serving, found := f.frontends[frontendKey{protocol: protocol, addr: dst.Unmap(), port: flow.Forward.DstPort}]
	if !found {
		serving, found = f.nodePorts[nodePortKey{protocol: protocol, port: flow.Forward.DstPort}]
	}
	if !found {
		return false
	}
	if _, isServing := serving[replySrc]; isServing {
		return false
	}
	klog.V(6).InfoS("Deleting stale conntrack flow", "flow", flow.String())
	return true
}

// familyOf returns the Kubernetes IP family of an (unmapped) address.
func familyOf(addr netip.Addr) v1.IPFamily {
	if addr.Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}
