package app

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// modeFactory builds a mode's backend; stop releases what it holds (it does not remove rules).
type modeFactory func(ctx context.Context, env *modeEnv) (backend proxier.Backend, stop func(), err error)

// modes are the proxy modes of this build; each backend's file adds itself in init.
var modes = map[v1alpha1.ProxyMode]modeFactory{}

// cleanups remove each mode's kernel state, for --cleanup and for leaving another mode.
var cleanups = map[v1alpha1.ProxyMode]func() error{}

// modeEnv is what every backend factory gets: the node and the shared configuration resolved
// per IP family.
type modeEnv struct {
	Config            *Config
	Families          []v1.IPFamily
	NodeIPs           []netip.Addr
	Detectors         map[v1.IPFamily]proxier.LocalDetector
	NodePortAddresses map[v1.IPFamily][]netip.Prefix
	Metrics           *metrics.Metrics
	Registry          *prometheus.Registry
	// core is set once the Core exists, for backends that must ask for a full sync later
	// (drift, canaries); use forceFullSync.
	core *proxier.Core
}

// forceFullSync asks the Core for a full sync (a no-op before the Core exists).
func (e *modeEnv) forceFullSync() {
	if e.core != nil {
		e.core.ForceFullSync()
	}
}

// newModeEnv resolves node IPs, IP families, local-traffic detectors and node-port addresses.
func newModeEnv(ctx context.Context, cfg *Config, client kubernetes.Interface) (*modeEnv, error) {
	reg, m, err := newRegistry(string(cfg.Mode))
	if err != nil {
		return nil, err
	}
	env := &modeEnv{Config: cfg, Metrics: m, Registry: reg}
	node := waitForNode(ctx, client, cfg.NodeName)
	env.NodeIPs = nodeIPs(cfg.BindAddress, node)
	env.Families = families(env.NodeIPs[0])
	env.Detectors = map[v1.IPFamily]proxier.LocalDetector{}
	env.NodePortAddresses = map[v1.IPFamily][]netip.Prefix{}
	for _, f := range env.Families {
		env.Detectors[f] = detector(cfg, node, f)
		pfxs, err := proxier.NodePortAddresses(cfg.NodePortAddresses, env.NodeIPs, f == v1.IPv4Protocol)
		if err != nil {
			return nil, err
		}
		env.NodePortAddresses[f] = pfxs
	}
	return env, nil
}

// newClient builds the API client from --kubeconfig / --master, or the in-cluster config.
func newClient(cfg *Config) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig == "" && cfg.Master == "" {
		klog.InfoS("Neither kubeconfig nor master given, using in-cluster configuration")
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: cfg.Kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdClusterOverride(cfg.Master)}).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("building the API client configuration: %w", err)
	}
	rc.AcceptContentTypes = cfg.AcceptContentTypes
	rc.ContentType = cfg.ContentType
	rc.QPS = cfg.QPS
	rc.Burst = int(cfg.Burst)
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("creating the API client: %w", err)
	}
	return c, nil
}

// waitForNode fetches this node, waiting up to 30 s for it to have addresses (as upstream's
// NodeManager does). It returns nil without a client or when the node never shows up.
func waitForNode(ctx context.Context, client kubernetes.Interface, name string) *v1.Node {
	if client == nil {
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && len(node.Status.Addresses) > 0 {
			return node
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			klog.InfoS("Could not get this node's addresses", "node", name, "err", err)
			return node
		}
		time.Sleep(time.Second)
	}
}

// nodeIPs returns the node's primary IPs: --bind-address if it is specific, else the Node's
// InternalIP/ExternalIP addresses (first of each family), else loopback (as upstream).
func nodeIPs(bindAddress string, node *v1.Node) []netip.Addr {
	if ip, err := netip.ParseAddr(bindAddress); err == nil && !ip.IsUnspecified() {
		return []netip.Addr{ip}
	}
	var out []netip.Addr
	seen := map[bool]bool{}
	if node != nil {
		for _, kind := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
			for _, a := range node.Status.Addresses {
				ip, err := netip.ParseAddr(a.Address)
				if a.Type != kind || err != nil || seen[ip.Is4()] {
					continue
				}
				seen[ip.Is4()] = true
				out = append(out, ip)
			}
		}
	}
	if len(out) == 0 {
		klog.InfoS("Can't determine this node's IP, assuming loopback; if this is incorrect, please set the --bind-address flag")
		out = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	}
	return out
}

// families returns the IP families to proxy: the primary IP's first, and the other one when
// the host supports it (upstream runs dual-stack whenever the host can).
func families(primary netip.Addr) []v1.IPFamily {
	v6 := ipv6Supported()
	if primary.Is6() {
		return []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}
	}
	if v6 {
		return []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	}
	return []v1.IPFamily{v1.IPv4Protocol}
}

// ipv6Supported reports whether IPv6 is enabled on this host.
func ipv6Supported() bool {
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

// detector builds the local-traffic detector of one family.
func detector(cfg *Config, node *v1.Node, family v1.IPFamily) proxier.LocalDetector {
	is4 := family == v1.IPv4Protocol
	d := proxier.LocalDetector{Mode: proxier.LocalMode(cfg.DetectLocalMode)}
	switch d.Mode {
	case proxier.LocalModeClusterCIDR:
		for _, p := range cfg.ClusterCIDRs {
			if p.Addr().Is4() == is4 {
				d.CIDR = p
				break
			}
		}
	case proxier.LocalModeNodeCIDR:
		if node != nil {
			for _, s := range node.Spec.PodCIDRs {
				if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() == is4 {
					d.CIDR = p
					break
				}
			}
		}
	case proxier.LocalModeBridgeInterface:
		d.Interface = cfg.BridgeInterface
	case proxier.LocalModeInterfaceNamePrefix:
		d.Interface = cfg.InterfaceNamePrefix
	}
	if !d.Implemented() {
		klog.InfoS("Local traffic detection is not available for this family; ClusterIP traffic from outside the cluster is not masqueraded", "mode", d.Mode, "ipFamily", family)
	}
	return d
}

// cleanupAll removes every mode's kernel state (and upstream kube-proxy's), as --cleanup does.
func cleanupAll() error {
	var errs []error
	for mode, clean := range cleanups {
		if err := clean(); err != nil {
			errs = append(errs, fmt.Errorf("cleaning up %s rules: %w", mode, err))
		}
	}
	return errors.Join(errs...)
}

// clientcmdClusterOverride returns the --master override for clientcmd.
func clientcmdClusterOverride(master string) clientcmdapi.Cluster {
	return clientcmdapi.Cluster{Server: master}
}
