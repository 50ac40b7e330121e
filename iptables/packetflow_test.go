package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/proxiertest"
)

// iptablesOnlySkips are the shared Cases whose expectation is nftables mode's: iptables mode
// has no rule rejecting unknown ports of an active ClusterIP (nftables' cluster-ips-check).
var iptablesOnlySkips = proxiertest.SkipCases(
	"iptables mode has no reject for unknown ports of a ClusterIP (nftables-only cluster-ips-check)",
	"clusterip-udp-to-tcp-only-port", "clusterip-unknown-port")

// configFor returns the backend configuration for the shared World's configuration: the
// ClusterCIDR detector, the node IP, the World's NodePort addresses and upstream's defaults.
func configFor(pc proxiertest.Config) Config {
	return Config{
		Families:           []v1.IPFamily{pc.Family},
		NodeIPs:            []netip.Addr{pc.NodeIP},
		Detectors:          map[v1.IPFamily]proxier.LocalDetector{pc.Family: {Mode: proxier.LocalModeClusterCIDR, CIDR: pc.ClusterCIDR}},
		NodePortAddresses:  map[v1.IPFamily][]netip.Prefix{pc.Family: pc.NodePortAddresses},
		LocalhostNodePorts: true,
		MasqueradeBit:      pc.MasqueradeBit,
	}
}

// programWorld feeds the shared World to backend through a proxier.Core and syncs once.
func programWorld(t *testing.T, backend proxier.Backend, pc proxiertest.Config) {
	t.Helper()
	core, err := proxier.NewCore(proxier.CoreConfig{
		NodeName: pc.NodeName, Families: []v1.IPFamily{pc.Family}, SyncPeriod: 30 * time.Second,
	}, backend)
	if err != nil {
		t.Fatalf("NewCore: %v", err)
	}
	w := proxiertest.World(pc.Family)
	core.OnNodeAdd(w.Node)
	for _, s := range w.Services {
		core.OnServiceAdd(s)
	}
	for _, s := range w.Slices {
		core.OnEndpointSliceAdd(s)
	}
	core.OnServiceSynced()
	core.OnEndpointSlicesSynced()
	if err := core.SyncNow(context.Background()); err != nil {
		t.Fatalf("Syncing the World: %v", err)
	}
}

func TestPacketFlowTracer(t *testing.T) {
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		t.Run(string(family), func(t *testing.T) {
			pc := proxiertest.NewConfig(family)
			fake := NewFake(family)
			cfg := configFor(pc)
			cfg.Executors = map[v1.IPFamily]Executor{family: fake}
			p, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			programWorld(t, p, pc)
			tr := &tracer{fake: fake, local: []netip.Addr{pc.NodeIP}}
			proxiertest.RunTracer(t, pc, func(c proxiertest.Case) proxiertest.Traced { return tr.trace(pc, c) }, iptablesOnlySkips)
		})
	}
}

func TestPacketFlowKernel(t *testing.T) {
	for _, variant := range []string{VariantNFT, VariantLegacy} {
		for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			t.Run(variant+"/"+string(family), func(t *testing.T) {
				if testing.Short() && (variant != VariantNFT || family != v1.IPv4Protocol) {
					t.Skip("-short: only nft/IPv4 against the kernel")
				}
				proxiertest.RunKernel(t, proxiertest.NewConfig(family), kernelBackend(variant), iptablesOnlySkips)
			})
		}
	}
}

func TestPacketFlowKernelChunked(t *testing.T) {
	// Every sync of the World is split into many chunk restores (nft only splits).
	setChunkChains(t, 3)
	proxiertest.RunKernel(t, proxiertest.NewConfig(v1.IPv4Protocol), kernelBackend(VariantNFT), iptablesOnlySkips)
}

// kernelBackend returns the RunKernel constructor of a Proxier of the given variant in the
// harness's node namespace.
func kernelBackend(variant string) func(*testing.T, netns.NsHandle, proxiertest.Config) proxier.Backend {
	return func(t *testing.T, nodeNS netns.NsHandle, pc proxiertest.Config) proxier.Backend {
		cfg := configFor(pc)
		cfg.Variant = variant
		// The harness's handle, by path: the backend execs iptables in it.
		cfg.NetNS = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(nodeNS))
		p, err := New(cfg)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return p
	}
}
