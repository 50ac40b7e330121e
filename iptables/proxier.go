package iptables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// DefaultSyncPeriod is the canary poll interval when Config.SyncPeriod is zero (upstream's
// default syncPeriod).
const DefaultSyncPeriod = 30 * time.Second

// Sysctls nodeproxy reads or writes, as upstream.
const (
	sysctlRouteLocalnet = "net/ipv4/conf/all/route_localnet"
	sysctlTCPBeLiberal  = "net/netfilter/nf_conntrack_tcp_be_liberal"
)

// Config configures the iptables backend.
type Config struct {
	// Families are the IP families to program (iptables for IPv4, ip6tables for IPv6).
	Families []v1.IPFamily
	// NodeIPs are the node's addresses (LoadBalancer source ranges containing one also allow
	// the VIPs as sources, for hairpinned LB traffic).
	NodeIPs []netip.Addr
	// Detectors tell pod traffic apart, per family (the zero detector: not implemented).
	Detectors map[v1.IPFamily]proxier.LocalDetector
	// NodePortAddresses are the prefixes NodePorts answer on, per family; nil or empty means
	// every local address (upstream iptables mode's default).
	NodePortAddresses map[v1.IPFamily][]netip.Prefix
	// LocalhostNodePorts makes IPv4 NodePorts answer on 127.0.0.0/8 when the NodePort
	// addresses include it (sets route_localnet=1 and installs the anti-martian rule).
	LocalhostNodePorts bool
	// MasqueradeBit is the fwmark bit (0-31) marking packets for masquerading.
	MasqueradeBit int
	// MasqueradeAll masquerades all ClusterIP traffic.
	MasqueradeAll bool
	// SyncPeriod is the canary poll interval (DefaultSyncPeriod when zero).
	SyncPeriod time.Duration
	// OnCanaryLost is called when a canary chain disappears or is flushed (the caller should
	// force a full sync; the next Sync is full anyway).
	OnCanaryLost func()
	// NetNS is the network namespace to program: "" for the current one, a name under
	// /var/run/netns, or an absolute namespace path (for tests).
	NetNS string
	// Metrics receives the iptables metrics (optional).
	Metrics *metrics.Metrics
	// Variant is VariantLegacy, VariantNFT, or "" to detect the one the node uses.
	Variant string
	// Executors replace the iptables binaries per family (tests: see Fake). When set, New
	// touches no sysctl and assumes nf_conntrack_tcp_be_liberal is off.
	Executors map[v1.IPFamily]Executor
}

// Proxier is the iptables backend: it implements proxier.Backend.
type Proxier struct {
	cfg      Config
	families []*familyProxier
}

var _ proxier.Backend = (*Proxier)(nil)

// New validates cfg, detects the iptables variant, prepares the sysctls and returns the backend.
// It programs no rule: the first Sync (a full one) does.
func New(cfg Config) (*Proxier, error) {
	if len(cfg.Families) == 0 {
		return nil, fmt.Errorf("creating the iptables proxier: no IP family configured")
	}
	if cfg.MasqueradeBit < 0 || cfg.MasqueradeBit > 31 {
		return nil, fmt.Errorf("creating the iptables proxier: masquerade bit %d is not in [0, 31]", cfg.MasqueradeBit)
	}
	if cfg.SyncPeriod <= 0 {
		cfg.SyncPeriod = DefaultSyncPeriod
	}
	ns := newNSRunner(cfg.NetNS)
	variant, err := chooseVariant(cfg)
	if err != nil {
		return nil, err
	}
	p := &Proxier{cfg: cfg}
	for _, family := range cfg.Families {
		if family != v1.IPv4Protocol && family != v1.IPv6Protocol {
			return nil, fmt.Errorf("creating the iptables proxier: unknown IP family %q", family)
		}
		fr := newFamilyRules(cfg, family)
		exec := cfg.Executors[family]
		if exec == nil {
			if exec, err = newExecExecutor(family, variant, ns); err != nil {
				return nil, fmt.Errorf("creating the %s iptables proxier: %w", family, err)
			}
			if err := prepareHost(ns, fr); err != nil {
				return nil, fmt.Errorf("creating the %s iptables proxier: %w", family, err)
			}
		}
		p.families = append(p.families, &familyProxier{family: family, exec: exec, rules: fr, metrics: cfg.Metrics,
			splitRestores: variant != VariantLegacy})
	}
	klog.InfoS("Created the iptables proxier", "families", cfg.Families, "variant", variant, "netns", ns.String())
	return p, nil
}

// chooseVariant returns the configured or detected variant ("" when every family has an
// Executor).
func chooseVariant(cfg Config) (string, error) {
	switch cfg.Variant {
	case VariantLegacy, VariantNFT:
		return cfg.Variant, nil
	case "":
	default:
		return "", fmt.Errorf("creating the iptables proxier: unknown iptables variant %q (want %q or %q)", cfg.Variant, VariantLegacy, VariantNFT)
	}
	for _, f := range cfg.Families {
		if cfg.Executors[f] == nil {
			return DetectVariant(cfg.NetNS)
		}
	}
	return "", nil // every family has its Executor
}

// prepareHost sets route_localnet for localhost NodePorts and reads tcp_be_liberal, in ns.
func prepareHost(ns nsRunner, fr *familyRules) error {
	if fr.localhostNodePorts {
		klog.InfoS("Setting route_localnet=1 to allow NodePorts on localhost; to change this disable iptables.localhostNodePorts or set nodePortAddresses to exclude loopback addresses")
		if err := ns.ensureSysctl(sysctlRouteLocalnet, "1"); err != nil {
			return err
		}
	}
	if val, err := ns.readSysctl(sysctlTCPBeLiberal); err == nil && val != "0" {
		klog.InfoS("nf_conntrack_tcp_be_liberal is set, not installing the DROP rule for INVALID packets")
		fr.tcpBeLiberal = true
	}
	return nil
}

// newFamilyRules derives one family's rule-building configuration from cfg.
func newFamilyRules(cfg Config, family v1.IPFamily) *familyRules {
	fr := &familyRules{
		family:        family,
		masqMark:      fmt.Sprintf("%#08x", 1<<uint(cfg.MasqueradeBit)),
		masqueradeAll: cfg.MasqueradeAll,
		detector:      cfg.Detectors[family],
	}
	for _, ip := range cfg.NodeIPs {
		if proxier.FamilyOf(ip) == family {
			fr.nodeIPs = append(fr.nodeIPs, ip.Unmap())
		}
	}
	var prefixes []netip.Prefix
	matchAll := true
	for _, pfx := range cfg.NodePortAddresses[family] {
		if proxier.FamilyOf(pfx.Addr()) != family {
			continue
		}
		if pfx.Bits() == 0 {
			matchAll, prefixes = true, nil
			break
		}
		matchAll = false
		prefixes = append(prefixes, pfx.Masked())
	}
	loop := loopback(family)
	fr.localhostNodePorts = cfg.LocalhostNodePorts && family == v1.IPv4Protocol &&
		(matchAll || containsAddr(prefixes, netip.MustParseAddr("127.0.0.1")))
	for _, pfx := range prefixes {
		if loop.Contains(pfx.Addr()) && pfx.Bits() >= loop.Bits() && !fr.localhostNodePorts {
			klog.InfoS("Ignoring loopback nodePortAddresses entry: localhost NodePorts are not supported here", "family", family, "prefix", pfx, "localhostNodePorts", cfg.LocalhostNodePorts)
			continue
		}
		fr.nodePortAddresses = append(fr.nodePortAddresses, pfx)
	}
	fr.nodePortsOnAllLocal = matchAll
	return fr
}

// containsAddr reports whether any prefix contains ip.
func containsAddr(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Sync implements proxier.Backend: one iptables-restore per family (none when nothing
// changed; with iptables-nft, a big sync is split into chunk restores and a final one).
// Families are programmed concurrently.
func (p *Proxier) Sync(ctx context.Context, req *proxier.SyncRequest) error {
	type job struct {
		fp      *familyProxier
		co      *proxier.Checkout
		tracker *proxier.Tracker
	}
	var jobs []job
	for _, fp := range p.families {
		j := job{fp: fp}
		for _, co := range req.Checkouts {
			if co != nil && co.Family == fp.family {
				j.co = co
			}
		}
		for _, t := range req.Trackers {
			if t != nil && t.Family() == fp.family {
				j.tracker = t
			}
		}
		if j.co != nil || j.tracker != nil {
			jobs = append(jobs, j)
		}
	}
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Go(func() { errs[i] = j.fp.sync(ctx, req.Full, j.co, j.tracker, req.Node) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
