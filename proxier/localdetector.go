package proxier

import (
	"fmt"
	"net/netip"
	"strings"
)

// LocalMode names how a backend tells traffic from local pods apart (detectLocalMode).
type LocalMode string

// The local-traffic detector modes of kube-proxy.
const (
	LocalModeClusterCIDR         LocalMode = "ClusterCIDR"
	LocalModeNodeCIDR            LocalMode = "NodeCIDR"
	LocalModeBridgeInterface     LocalMode = "BridgeInterface"
	LocalModeInterfaceNamePrefix LocalMode = "InterfaceNamePrefix"
)

// LocalDetector says which packets come from pods, for one IP family. The zero value is
// "not implemented": no packet is known to come from a pod (and ClusterIP traffic from outside
// is then not masqueraded, as upstream).
type LocalDetector struct {
	// Mode is the detector kind.
	Mode LocalMode
	// CIDR is the pod range (ClusterCIDR and NodeCIDR modes).
	CIDR netip.Prefix
	// Interface is the pod bridge name (BridgeInterface) or the interface name prefix
	// (InterfaceNamePrefix).
	Interface string
}

// Implemented reports whether the detector can tell anything.
func (d LocalDetector) Implemented() bool {
	switch d.Mode {
	case LocalModeClusterCIDR, LocalModeNodeCIDR:
		return d.CIDR.IsValid()
	case LocalModeBridgeInterface, LocalModeInterfaceNamePrefix:
		return d.Interface != ""
	}
	return false
}

// NodePortAddresses expands --nodeport-addresses entries (CIDRs and the keywords primary,
// localhost and all) into prefixes of one IP family. nodeIPs are the node's primary addresses.
// An empty result means "every local address" (the family had no entry of its own).
func NodePortAddresses(entries []string, nodeIPs []netip.Addr, family4 bool) ([]netip.Prefix, error) {
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		if p.Addr().Is4() == family4 {
			out = append(out, p.Masked())
		}
	}
	for _, e := range entries {
		switch strings.TrimSpace(e) {
		case "primary":
			for _, ip := range nodeIPs {
				add(netip.PrefixFrom(ip, ip.BitLen()))
			}
		case "localhost":
			add(netip.MustParsePrefix("127.0.0.0/8"))
			add(netip.MustParsePrefix("::1/128"))
		case "all":
			add(netip.MustParsePrefix("0.0.0.0/0"))
			add(netip.MustParsePrefix("::/0"))
		default:
			p, err := netip.ParsePrefix(strings.TrimSpace(e))
			if err != nil {
				return nil, fmt.Errorf("parsing nodePortAddresses entry %q: %w", e, err)
			}
			add(p)
		}
	}
	for _, p := range out {
		if p.Bits() == 0 {
			return nil, nil // match-all
		}
	}
	return out, nil
}
