package cluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Short names of the members of the test topology (GUIDE §3). Every run prefixes them with its
// run ID to get the named network namespace (see Cluster.NS).
const (
	ControlPlane = "cp"     // etcd, kube-apiserver, kube-controller-manager
	LAN          = "lan"    // the bridge joining all other members
	NodeA        = "node-a" // a node: proxy and pod agent
	NodeB        = "node-b" // a node: proxy and pod agent
	External     = "ext"    // an outside client
)

// Addresses of the test topology.
const (
	ControlPlaneIP   = "192.0.2.1"
	NodeAIP          = "192.0.2.11"
	NodeBIP          = "192.0.2.12"
	ExternalIP       = "192.0.2.100"
	LANCIDR          = "192.0.2.0/24"
	ServiceCIDR      = "10.96.0.0/16"   // kube-apiserver --service-cluster-ip-range
	KubernetesIP     = "10.96.0.1"      // ClusterIP of default/kubernetes
	LoadBalancerCIDR = "203.0.113.0/24" // LoadBalancer ingress and externalIPs, routed via node-a
	ClusterCIDR      = "10.244.0.0/16"  // all pod CIDRs; the proxy's --cluster-cidr
	NodeAPodCIDR     = "10.244.1.0/24"
	NodeBPodCIDR     = "10.244.2.0/24"
)

// lanBridge is the bridge in the lan namespace; the veth end in every other member is eth0.
const (
	lanBridge      = "br0"
	memberLinkName = "eth0"
)

// member is one namespace attached to the lan bridge.
type member struct {
	name   string
	ip     string
	routes map[string]string // destination CIDR -> gateway
	router bool              // enable IPv4 forwarding
}

// members is the fixed topology: everything but the lan namespace itself.
var members = []member{
	{name: ControlPlane, ip: ControlPlaneIP},
	// Nodes have a default route, as real nodes do: without one, a connection from the node
	// to a ClusterIP fails with "network unreachable" before the nat hook can DNAT it.
	{name: NodeA, ip: NodeAIP, routes: map[string]string{NodeBPodCIDR: NodeBIP, "0.0.0.0/0": ControlPlaneIP}, router: true},
	{name: NodeB, ip: NodeBIP, routes: map[string]string{NodeAPodCIDR: NodeAIP, "0.0.0.0/0": ControlPlaneIP}, router: true},
	{name: External, ip: ExternalIP, routes: map[string]string{ServiceCIDR: NodeAIP, LoadBalancerCIDR: NodeAIP}},
}

// topology names the namespaces of one run.
type topology struct {
	runID string
}

// ns returns the named network namespace of a member ("node-a" -> "<runID>-node-a"). A name
// that already carries the run prefix is returned unchanged.
func (tp topology) ns(name string) string {
	if strings.HasPrefix(name, tp.runID+"-") {
		return name
	}
	return tp.runID + "-" + name
}

// create makes the namespaces, the bridge, the veth pairs, addresses and routes.
// Equivalent to a series of `ip netns add`, `ip link add ... type veth peer ... netns ...`,
// `ip addr add` and `ip route add`.
func (tp topology) create() error {
	if err := addNamespace(tp.ns(LAN)); err != nil {
		return err
	}
	lan, err := openHandle(tp.ns(LAN))
	if err != nil {
		return err
	}
	defer lan.Close()
	if err := lan.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}); err != nil {
		return fmt.Errorf("setting lo up in %s: %w", tp.ns(LAN), err)
	}
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: lanBridge}}
	if err := lan.LinkAdd(bridge); err != nil {
		return fmt.Errorf("adding bridge %s in %s: %w", lanBridge, tp.ns(LAN), err)
	}
	if err := lan.LinkSetUp(bridge); err != nil {
		return fmt.Errorf("setting bridge %s up: %w", lanBridge, err)
	}
	for _, m := range members {
		if err := tp.attach(lan, bridge, m); err != nil {
			return fmt.Errorf("attaching %s to the lan: %w", m.name, err)
		}
	}
	return nil
}

// attach creates member m's namespace and joins it to the bridge with a veth pair.
func (tp topology) attach(lan *netlink.Handle, bridge *netlink.Bridge, m member) error {
	name := tp.ns(m.name)
	if err := addNamespace(name); err != nil {
		return err
	}
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", name, err)
	}
	defer target.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: m.name, MasterIndex: bridge.Index},
		PeerName:      memberLinkName,
		PeerNamespace: netlink.NsFd(target),
	}
	if err := lan.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s/%s: %w", m.name, memberLinkName, err)
	}
	if err := lan.LinkSetUp(veth); err != nil {
		return fmt.Errorf("setting %s up: %w", m.name, err)
	}
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return fmt.Errorf("opening netlink in %s: %w", name, err)
	}
	defer h.Close()
	return configureMember(h, name, m)
}

// configureMember brings lo and eth0 up, assigns the address and adds the routes.
func configureMember(h *netlink.Handle, name string, m member) error {
	if err := h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}); err != nil {
		return fmt.Errorf("setting lo up in %s: %w", name, err)
	}
	link, err := h.LinkByName(memberLinkName)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", memberLinkName, name, err)
	}
	addr, err := netlink.ParseAddr(m.ip + "/24")
	if err != nil {
		return fmt.Errorf("parsing address %s: %w", m.ip, err)
	}
	if err := h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("adding %s in %s: %w", m.ip, name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up in %s: %w", memberLinkName, name, err)
	}
	for cidr, gateway := range m.routes {
		_, dst, err := net.ParseCIDR(cidr)
		if err != nil {
			return fmt.Errorf("parsing route %s: %w", cidr, err)
		}
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Gw: net.ParseIP(gateway)}
		if err := h.RouteAdd(route); err != nil {
			return fmt.Errorf("adding route %s via %s in %s: %w", cidr, gateway, name, err)
		}
	}
	if m.router {
		return inNamespace(name, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
		})
	}
	return nil
}

// destroy deletes every named namespace of the run (members, lan and any other namespace
// whose name starts with the run ID, such as pod namespaces). Deleting a namespace with no
// process left in it removes its veth ends too.
func (tp topology) destroy() error {
	names, err := namespacesWithPrefix(tp.runID + "-")
	if err != nil {
		return err
	}
	var failed []string
	for _, name := range names {
		if err := deleteNamespace(name); err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("deleting namespaces: %s", strings.Join(failed, "; "))
	}
	return nil
}

// netnsDir is where iproute2 keeps named network namespaces.
const netnsDir = "/run/netns"

// namespacesWithPrefix lists the named network namespaces whose name starts with prefix.
func namespacesWithPrefix(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", netnsDir, err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// addNamespace is `ip netns add name`.
func addNamespace(name string) error {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// deleteNamespace is `ip netns delete name`; a namespace already gone is not an error.
func deleteNamespace(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); os.IsNotExist(err) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func openHandle(name string) (*netlink.Handle, error) {
	target, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", name, err)
	}
	defer target.Close()
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return nil, fmt.Errorf("opening netlink in %s: %w", name, err)
	}
	return h, nil
}

// inNamespace runs fn on a fresh OS thread switched into the named namespace. The thread is
// switched back afterwards; if that fails the goroutine exits still locked, so the Go runtime
// discards the thread instead of reusing it in the wrong namespace.
func inNamespace(name string, fn func() error) error {
	result := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		original, err := netns.Get()
		if err != nil {
			result <- fmt.Errorf("getting the current namespace: %w", err)
			return
		}
		defer original.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			result <- fmt.Errorf("opening namespace %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			result <- fmt.Errorf("entering namespace %s: %w", name, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(original); err == nil {
			runtime.UnlockOSThread()
		}
		result <- fnErr
	}()
	return <-result
}

// dialContext dials addr from inside the named namespace. The socket is created in that
// namespace and stays there; only the creating thread switches namespaces.
func dialContext(ctx context.Context, nsName, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNamespace(nsName, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s from %s: %w", network, addr, nsName, err)
	}
	return conn, nil
}

// httpClient returns an HTTP client whose connections are made from inside nsName.
func httpClient(nsName string, timeout time.Duration) *http.Client {
	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialContext(ctx, nsName, network, addr)
		},
		DisableKeepAlives: true,
	}
	return &http.Client{Transport: transport, Timeout: timeout}
}
