package proxiertest

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// Interface names inside the namespaces.
const (
	lanBridge = "br0"  // the bridge in the lan namespace
	lanLink   = "lan0" // each node's and the client's veth to the lan
	podBridge = "cbr0" // each node's pod bridge
	podLink   = "eth0" // each pod's veth
)

// podSpec is one pod namespace: its address, node and the ports its echo servers listen on.
type podSpec struct {
	ip    netip.Addr
	node  string
	ports []int32
}

// topology is the set of namespaces of one kernel run (package doc: address plan; GUIDE §3).
//
// Pods get a host address (/32, /128) and a default route via their node's cbr0 address, so
// every packet between pods, even on one bridge, is routed by the node and passes its
// netfilter hooks (the kubenet-style alternative, pods sharing a /24 on the bridge, would let
// replies between two pods of node-a bypass the node and its un-DNAT).
type topology struct {
	p      plan
	prefix string

	names   []string // named namespaces created, in order
	handles []netns.NsHandle
	links   []*netlink.Handle

	lan, nodeA, nodeB, client netns.NsHandle
	nodeLinks                 map[string]*netlink.Handle // node name → netlink handle in it
	pods                      map[netip.Addr]netns.NsHandle
}

func newTopology(family v1.IPFamily, prefix string) *topology {
	return &topology{
		p:         planFor(family),
		prefix:    prefix,
		nodeLinks: map[string]*netlink.Handle{},
		pods:      map[netip.Addr]netns.NsHandle{},
	}
}

// newNS creates the named namespace prefix+role with loopback up, DAD off and rp_filter off,
// and returns it with a netlink handle in it.
func (tp *topology) newNS(role string) (netns.NsHandle, *netlink.Handle, error) {
	name := tp.prefix + role
	ns, err := newNamedNS(name)
	if err != nil {
		return netns.None(), nil, err
	}
	tp.names = append(tp.names, name)
	tp.handles = append(tp.handles, ns)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return netns.None(), nil, fmt.Errorf("opening a netlink handle in %s: %w", name, err)
	}
	tp.links = append(tp.links, h)
	err = setSysctls(ns, map[string]string{
		"net/ipv6/conf/all/accept_dad":     "0",
		"net/ipv6/conf/default/accept_dad": "0",
		"net/ipv4/conf/all/rp_filter":      "0",
		"net/ipv4/conf/default/rp_filter":  "0",
	})
	if err != nil {
		return netns.None(), nil, fmt.Errorf("configuring %s: %w", name, err)
	}
	return ns, h, linkUp(h, "lo")
}

// close removes everything the topology created; it is safe on a partly built topology.
func (tp *topology) close() error {
	var errs []error
	for _, h := range tp.links {
		h.Close()
	}
	for _, ns := range tp.handles {
		if err := ns.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing a namespace handle: %w", err))
		}
	}
	for i := len(tp.names) - 1; i >= 0; i-- {
		if err := netns.DeleteNamed(tp.names[i]); err != nil {
			errs = append(errs, fmt.Errorf("deleting network namespace %s: %w", tp.names[i], err))
		}
	}
	tp.links, tp.handles, tp.names = nil, nil, nil
	return errors.Join(errs...)
}

// build creates the lan, both nodes, the outside client and one namespace per pod.
func (tp *topology) build(pods []podSpec) error {
	var lanH *netlink.Handle
	var err error
	if tp.lan, lanH, err = tp.newNS("lan"); err != nil {
		return err
	}
	if err := addBridge(lanH, lanBridge); err != nil {
		return fmt.Errorf("creating the lan bridge: %w", err)
	}
	if tp.nodeA, err = tp.buildNode(lanH, NodeAName, NodeBName); err != nil {
		return err
	}
	if tp.nodeB, err = tp.buildNode(lanH, NodeBName, NodeAName); err != nil {
		return err
	}
	if tp.client, err = tp.buildClient(lanH); err != nil {
		return err
	}
	for i, pod := range pods {
		if err := tp.buildPod(i, pod); err != nil {
			return fmt.Errorf("creating pod %s: %w", pod.ip, err)
		}
	}
	return nil
}

// joinLan creates the veth from the lan bridge to ns (named lan0 there) and gives it addr.
func (tp *topology) joinLan(lanH, h *netlink.Handle, ns netns.NsHandle, who string, addr netip.Addr) error {
	lanSide := "to-" + who
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: lanSide}, PeerName: lanLink, PeerNamespace: netlink.NsFd(int(ns))}
	if err := lanH.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s/%s for %s: %w", lanSide, lanLink, who, err)
	}
	if err := setMaster(lanH, lanSide, lanBridge); err != nil {
		return err
	}
	if err := linkUp(lanH, lanSide); err != nil {
		return err
	}
	if err := addAddr(h, lanLink, netip.PrefixFrom(addr, tp.p.lanBits()), false); err != nil {
		return err
	}
	return linkUp(h, lanLink)
}

// lanBits is the lan prefix length (/24, /64).
func (p plan) lanBits() int {
	if p.v6 {
		return 64
	}
	return 24
}

// buildNode creates a node: lan address, pod bridge, forwarding, and routes to the other
// node's pods. node-a also gets the probe alias and routes for the service and LB ranges so
// that its own connections to them are routed (and then DNATed) instead of failing.
func (tp *topology) buildNode(lanH *netlink.Handle, node, other string) (netns.NsHandle, error) {
	ns, h, err := tp.newNS(node)
	if err != nil {
		return ns, err
	}
	tp.nodeLinks[node] = h
	err = setSysctls(ns, map[string]string{
		"net/ipv4/ip_forward":                  "1",
		"net/ipv6/conf/all/forwarding":         "1",
		"net/ipv4/conf/all/send_redirects":     "0",
		"net/ipv4/conf/default/send_redirects": "0",
		// No per-host ICMP error rate limit: back-to-back Reject probes to one client must
		// each get their error.
		"net/ipv4/icmp_ratelimit": "0",
		"net/ipv6/icmp/ratelimit": "0",
	})
	if err != nil {
		return ns, fmt.Errorf("configuring %s: %w", node, err)
	}
	if err := tp.joinLan(lanH, h, ns, node, tp.p.lanIP(node)); err != nil {
		return ns, err
	}
	if err := addBridge(h, podBridge); err != nil {
		return ns, fmt.Errorf("creating %s on %s: %w", podBridge, node, err)
	}
	gw := netip.PrefixFrom(tp.p.podIP(node, 1), tp.p.podCIDR(node).Bits())
	if err := addAddr(h, podBridge, gw, false); err != nil {
		return ns, err
	}
	if err := addRoute(h, lanLink, tp.p.podCIDR(other), tp.p.lanIP(other)); err != nil {
		return ns, err
	}
	if node != NodeAName {
		return ns, nil
	}
	if err := addAddr(h, lanLink, netip.PrefixFrom(tp.p.lanIP("probe"), tp.p.lanBits()), true); err != nil {
		return ns, err
	}
	for _, dst := range tp.p.serviceRanges() {
		if err := addRoute(h, lanLink, dst, netip.Addr{}); err != nil {
			return ns, err
		}
	}
	return ns, nil
}

// serviceRanges are the service range and the LB / external IP range.
func (p plan) serviceRanges() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix(p.pick("10.96.0.0/16", "fd00:10:96::/112")),
		netip.MustParsePrefix(p.pick("203.0.113.0/24", "2001:db8:ff::/64")),
	}
}

// buildClient creates the outside client, routing the service and LB ranges via node-a.
func (tp *topology) buildClient(lanH *netlink.Handle) (netns.NsHandle, error) {
	ns, h, err := tp.newNS("client")
	if err != nil {
		return ns, err
	}
	if err := tp.joinLan(lanH, h, ns, "client", tp.p.lanIP("outside")); err != nil {
		return ns, err
	}
	for _, dst := range tp.p.serviceRanges() {
		if err := addRoute(h, lanLink, dst, tp.p.lanIP(NodeAName)); err != nil {
			return ns, err
		}
	}
	return ns, nil
}

// buildPod creates pod namespace number i on its node's bridge.
func (tp *topology) buildPod(i int, pod podSpec) error {
	role := "pod-" + strings.NewReplacer(":", "-", ".", "-").Replace(pod.ip.String())
	ns, h, err := tp.newNS(role)
	if err != nil {
		return err
	}
	tp.pods[pod.ip] = ns
	err = setSysctls(ns, map[string]string{
		"net/ipv4/conf/all/accept_redirects":     "0",
		"net/ipv4/conf/default/accept_redirects": "0",
		"net/ipv6/conf/all/accept_redirects":     "0",
		"net/ipv6/conf/default/accept_redirects": "0",
	})
	if err != nil {
		return err
	}
	nodeH := tp.nodeLinks[pod.node]
	if nodeH == nil {
		return fmt.Errorf("pod %s is on unknown node %q", pod.ip, pod.node)
	}
	hostSide := fmt.Sprintf("vp%d", i)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostSide}, PeerName: podLink, PeerNamespace: netlink.NsFd(int(ns))}
	if err := nodeH.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s: %w", hostSide, err)
	}
	if err := setMaster(nodeH, hostSide, podBridge); err != nil {
		return err
	}
	if err := setHairpin(nodeH, hostSide); err != nil {
		return err
	}
	if err := linkUp(nodeH, hostSide); err != nil {
		return err
	}
	if err := addAddr(h, podLink, hostPrefix(pod.ip), false); err != nil {
		return err
	}
	if err := linkUp(h, podLink); err != nil {
		return err
	}
	gw := tp.p.podIP(pod.node, 1)
	if err := addRoute(h, podLink, hostPrefix(gw), netip.Addr{}); err != nil {
		return err
	}
	return addRoute(h, podLink, netip.Prefix{}, gw)
}

// addBridge creates a bridge without multicast snooping (so IPv6 neighbour discovery is
// always flooded) and sets it up. Equivalent to: `ip link add NAME type bridge mcast_snooping 0`.
func addBridge(h *netlink.Handle, name string) error {
	snooping := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}, MulticastSnooping: &snooping}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("creating bridge %s: %w", name, err)
	}
	return linkUp(h, name)
}

// linkUp sets a link up. Equivalent to: `ip link set NAME up`.
func linkUp(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting link %s up: %w", name, err)
	}
	return nil
}

// setMaster attaches a link to a bridge. Equivalent to: `ip link set NAME master BRIDGE`.
func setMaster(h *netlink.Handle, name, bridge string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	br, err := h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("finding bridge %s: %w", bridge, err)
	}
	if err := h.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("attaching %s to %s: %w", name, bridge, err)
	}
	return nil
}

// setHairpin lets the bridge send a frame back out of the port it came in on, as kubelet's
// "hairpin-veth" mode does: with br_netfilter, a pod's packet DNATed back to the same pod is
// bridged back out of its own port. Equivalent to: `ip link set NAME type bridge_slave hairpin on`.
func setHairpin(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	if err := h.LinkSetHairpin(link, true); err != nil {
		return fmt.Errorf("setting hairpin mode on %s: %w", name, err)
	}
	return nil
}

// addAddr adds an address (IPv6: without DAD; deprecated: valid but never preferred as a
// source). Equivalent to: `ip addr add PREFIX dev NAME nodad [preferred_lft 0]`.
func addAddr(h *netlink.Handle, name string, pfx netip.Prefix, deprecated bool) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: ipNet(pfx)}
	if pfx.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	if deprecated {
		addr.ValidLft, addr.PreferedLft = math.MaxUint32, 0
	}
	if err := h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("adding address %s to %s: %w", pfx, name, err)
	}
	return nil
}

// addRoute adds a route to dst (the zero Prefix: default) via gw (the zero Addr: directly on
// the link). Equivalent to: `ip route add DST [via GW] dev NAME`.
func addRoute(h *netlink.Handle, name string, dst netip.Prefix, gw netip.Addr) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index}
	if dst.IsValid() {
		r.Dst = ipNet(dst.Masked())
	}
	if gw.IsValid() {
		r.Gw = net.IP(gw.AsSlice())
	} else if dst.Addr().Is4() {
		r.Scope = netlink.SCOPE_LINK
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("adding route %s via %s dev %s: %w", dst, gw, name, err)
	}
	return nil
}

// ipNet converts a prefix (address and length, not masked) to a *net.IPNet.
func ipNet(pfx netip.Prefix) *net.IPNet {
	ip := pfx.Addr()
	return &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(pfx.Bits(), ip.BitLen())}
}

// collectPods returns one podSpec per endpoint address of the World's slices (with every
// target port it serves) plus node-a's non-endpoint client pod, sorted by address.
func collectPods(w *WorldState, family v1.IPFamily) []podSpec {
	byIP := map[netip.Addr]*podSpec{}
	client := LocalPodIP(family)
	byIP[client] = &podSpec{ip: client, node: NodeAName}
	for _, s := range w.Slices {
		for _, e := range s.Endpoints {
			ip, err := netip.ParseAddr(e.Addresses[0])
			if err != nil || e.NodeName == nil {
				continue
			}
			pod := byIP[ip]
			if pod == nil {
				pod = &podSpec{ip: ip, node: *e.NodeName}
				byIP[ip] = pod
			}
			for _, port := range s.Ports {
				if port.Port != nil && !slices.Contains(pod.ports, *port.Port) {
					pod.ports = append(pod.ports, *port.Port)
				}
			}
		}
	}
	out := make([]podSpec, 0, len(byIP))
	for _, pod := range byIP {
		out = append(out, *pod)
	}
	slices.SortFunc(out, func(a, b podSpec) int { return a.ip.Compare(b.ip) })
	return out
}
