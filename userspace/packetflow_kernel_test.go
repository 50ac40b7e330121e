package userspace

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
	"github.com/nodeproxy/nodeproxy/proxier/proxiertest"
)

func TestPacketFlowKernelIPv4(t *testing.T) { testPacketFlowKernel(t, v1.IPv4Protocol) }

func TestPacketFlowKernelIPv6(t *testing.T) { testPacketFlowKernel(t, v1.IPv6Protocol) }

// testPacketFlowKernel runs the shared packet-flow cases through the real kernel with this
// mode in node-a's namespace, skipping what the mode cannot do by design (userspaceSkips).
func testPacketFlowKernel(t *testing.T, family v1.IPFamily) {
	cfg := proxiertest.NewConfig(family)
	newBackend := func(t *testing.T, nodeNS netns.NsHandle, cfg proxiertest.Config) proxier.Backend {
		p, err := New(Config{
			Families:          []v1.IPFamily{cfg.Family},
			NodeIPs:           []netip.Addr{cfg.NodeIP},
			NodePortAddresses: map[v1.IPFamily][]netip.Prefix{cfg.Family: cfg.NodePortAddresses},
			NetNSFd:           int(nodeNS),
			Metrics:           metrics.New(metrics.ModeUserspace),
		})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		t.Cleanup(func() {
			if err := p.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return p
	}
	proxiertest.RunKernel(t, cfg, newBackend, userspaceSkips(family)...)
}

// userspaceSkips returns the cases this mode cannot satisfy, each with its reason.
func userspaceSkips(family v1.IPFamily) []proxiertest.Option {
	// The proxy opens its own connection to the endpoint, so the endpoint always sees a node
	// address as the client: every case that wants the client's own address fails by design.
	// That includes eTP Local from outside (only local endpoints are used, as the case wants,
	// but the client address is lost) and pods reaching an eTP Local NodePort or external IP
	// (which this mode also serves from local endpoints only: it has no local-traffic
	// detector to short-circuit pods to the cluster endpoints).
	var unmasqueraded []string
	for _, c := range proxiertest.Cases(family) {
		if c.Want.Verdict == proxiertest.Reach && !c.Want.Masquerade {
			unmasqueraded = append(unmasqueraded, c.Name)
		}
	}
	return []proxiertest.Option{
		proxiertest.SkipCases("userspace mode: the endpoint sees the node, not the client, as the source", unmasqueraded...),
		// Only the ports of a Service are captured; other traffic to a ClusterIP is routed like
		// any packet (upstream nftables mode rejects it).
		proxiertest.SkipCases("userspace mode: unknown ports of a ClusterIP are not captured, so not rejected",
			"clusterip-udp-to-tcp-only-port", "clusterip-unknown-port"),
		// The capture redirects by destination only; there is no firewall by source address.
		proxiertest.SkipCases("userspace mode: loadBalancerSourceRanges are not enforced",
			"lb-from-pod-not-in-source-ranges", "lb-from-node-not-in-source-ranges", "lb-blocked-from-outside"),
		// A TCP connection is accepted by the listener before an endpoint is chosen, so without
		// endpoints it is reset after connecting (not refused at connect time, not dropped),
		// and a UDP datagram without endpoints is dropped (no ICMP port unreachable).
		proxiertest.SkipCases("userspace mode: without endpoints TCP is reset after the connect",
			"no-endpoints-clusterip-from-pod", "no-endpoints-clusterip-from-node",
			"no-endpoints-nodeport-from-outside", "no-endpoints-nodeport-from-pod",
			"etp-local-remote-nodeport-from-outside", "itp-local-remote-from-pod", "itp-local-remote-from-node"),
		proxiertest.SkipCases("userspace mode: without endpoints UDP is dropped, not rejected",
			"no-endpoints-clusterip-udp-from-pod", "no-endpoints-nodeport-udp-from-outside"),
	}
}
