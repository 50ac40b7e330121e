package endpoints

import (
	"bytes"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// topologyMode says which hints, if any, restrict the Cluster-policy endpoints.
type topologyMode int

const (
	// topologyNone means every ready endpoint is usable.
	topologyNone topologyMode = iota
	// topologySameNode means only endpoints hinted for this node are usable.
	topologySameNode
	// topologySameZone means only endpoints hinted for this node's zone are usable.
	topologySameZone
)

// Choose decides which of one service port's endpoints its traffic may go to from this node, as
// upstream kube-proxy's CategorizeEndpoints does:
//
//   - Cluster (only when policy.UsesClusterEndpoints()): the ready endpoints, narrowed by
//     trafficDistribution hints when they apply (same-node hints first, then same-zone hints),
//     or, when no endpoint anywhere is ready, every serving and terminating endpoint.
//   - Local (only when policy.UsesLocalEndpoints()): this node's ready endpoints, or, when it
//     has none, this node's serving and terminating endpoints. Hints are never applied here.
//   - AllReachable: Cluster ∪ Local, deduplicated by String().
//   - HasAny: whether any endpoint anywhere is ready, or serving and terminating.
//
// Every output list is sorted by String(); Cluster and Local are nil when the policy does not use
// them and non-nil (possibly empty) when it does. eps is not modified; the outputs may share
// hint slices with it.
func Choose(eps []Endpoint, policy Policy, node Node) Choice {
	eps = sortedByString(eps)
	var choice Choice
	choice.HasAny = slices.ContainsFunc(eps, func(ep Endpoint) bool {
		return ep.Ready || (ep.Serving && ep.Terminating)
	})

	if policy.UsesClusterEndpoints() {
		choice.Cluster = clusterEndpoints(eps, node)
	}
	if policy.UsesLocalEndpoints() {
		choice.Local = localEndpoints(eps)
	}

	switch {
	case choice.Local == nil:
		choice.AllReachable = choice.Cluster
	case choice.Cluster == nil:
		choice.AllReachable = choice.Local
	default:
		choice.AllReachable = mergeSorted(choice.Cluster, choice.Local)
	}
	return choice
}

// clusterEndpoints returns the usable endpoints for Cluster-policy traffic.
func clusterEndpoints(eps []Endpoint, node Node) []Endpoint {
	mode := topologyModeFromHints(eps, node)
	ready := filter(eps, func(ep Endpoint) bool {
		return ep.Ready && availableForTopology(ep, mode, node)
	})
	if len(ready) > 0 {
		return ready
	}
	// A hint mode is only chosen when some ready endpoint fits it, so an empty list here means
	// that nothing is ready anywhere: fall back to serving, terminating endpoints, ignoring hints.
	return filter(eps, func(ep Endpoint) bool { return ep.Serving && ep.Terminating })
}

// localEndpoints returns the usable endpoints for Local-policy traffic.
func localEndpoints(eps []Endpoint) []Endpoint {
	ready := filter(eps, func(ep Endpoint) bool { return ep.Local && ep.Ready })
	if len(ready) > 0 {
		return ready
	}
	return filter(eps, func(ep Endpoint) bool { return ep.Local && ep.Serving && ep.Terminating })
}

// topologyModeFromHints picks the hint mode for Cluster-policy endpoints. Same-node hints win
// when every ready endpoint has node hints and one of them names this node; otherwise same-zone
// hints apply when every ready endpoint has zone hints and one of them names this node's zone;
// otherwise no hint filtering is done.
func topologyModeFromHints(eps []Endpoint, node Node) topologyMode {
	anyReady := false
	allNodeHinted, forThisNode := true, false
	allZoneHinted, forThisZone := true, false
	for _, ep := range eps {
		if !ep.Ready {
			continue
		}
		anyReady = true
		if len(ep.NodeHints()) == 0 {
			allNodeHinted = false
		} else if node.Name != "" && slices.Contains(ep.NodeHints(), node.Name) {
			forThisNode = true
		}
		if len(ep.ZoneHints()) == 0 {
			allZoneHinted = false
		} else if node.Zone != "" && slices.Contains(ep.ZoneHints(), node.Zone) {
			forThisZone = true
		}
	}
	if !anyReady {
		return topologyNone
	}
	if allNodeHinted {
		if forThisNode {
			return topologySameNode
		}
		klog.V(4).InfoS("Ignoring same-node topology hints since none is for this node", "node", node.Name)
	}
	if allZoneHinted {
		if forThisZone {
			return topologySameZone
		}
		if node.Zone == "" {
			klog.V(4).InfoS("Ignoring same-zone topology hints since the node has no zone label",
				"label", v1.LabelTopologyZone)
		} else {
			klog.V(4).InfoS("Ignoring same-zone topology hints since none is for this zone", "zone", node.Zone)
		}
	}
	return topologyNone
}

// availableForTopology reports whether ep may be used from this node in the given hint mode.
func availableForTopology(ep Endpoint, mode topologyMode, node Node) bool {
	switch mode {
	case topologySameNode:
		return slices.Contains(ep.NodeHints(), node.Name)
	case topologySameZone:
		return slices.Contains(ep.ZoneHints(), node.Zone)
	default:
		return true
	}
}

// filter returns the endpoints for which keep is true, in their original order, as a
// non-nil slice that must not be modified: eps itself (capped, so appending copies) when
// keep holds for all of them, the common case, else a new slice.
func filter(eps []Endpoint, keep func(Endpoint) bool) []Endpoint {
	for i, ep := range eps {
		if keep(ep) {
			continue
		}
		out := make([]Endpoint, i, len(eps)-1)
		copy(out, eps[:i])
		for _, ep := range eps[i+1:] {
			if keep(ep) {
				out = append(out, ep)
			}
		}
		return out
	}
	if eps == nil {
		return []Endpoint{}
	}
	return eps[:len(eps):len(eps)]
}

// mergeSorted returns the union of two lists sorted by String(), dropping entries of b whose
// String() is already in a. The result is a new slice.
func mergeSorted(a, b []Endpoint) []Endpoint {
	out := make([]Endpoint, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch c := compareByString(a[i], b[j]); {
		case c < 0:
			out = append(out, a[i])
			i++
		case c > 0:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}

// sortedByString returns eps itself when it is already sorted by String(), and a sorted copy
// otherwise, so that the caller's slice is never reordered.
func sortedByString(eps []Endpoint) []Endpoint {
	if slices.IsSortedFunc(eps, compareByString) {
		return eps
	}
	sorted := slices.Clone(eps)
	slices.SortStableFunc(sorted, compareByString)
	return sorted
}

// maxAddrPortLen is the longest text form of a netip.AddrPort: a bracketed IPv6 address with a
// zone is longer, but endpoint addresses never carry zones, and longer forms still compare
// correctly (the buffer just grows).
const maxAddrPortLen = len("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535")

// compareByString orders endpoints exactly as comparing their String() values would, without
// allocating.
func compareByString(a, b Endpoint) int {
	var bufA, bufB [maxAddrPortLen]byte
	return bytes.Compare(a.AddrPort().AppendTo(bufA[:0]), b.AddrPort().AppendTo(bufB[:0]))
}
