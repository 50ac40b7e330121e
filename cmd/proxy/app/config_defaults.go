package app

import (
	"net"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
	"k8s.io/utils/ptr"
)

// Proxy modes accepted by nodeproxy.
const (
	// ModeIPTables programs Services with iptables (the default on Linux).
	ModeIPTables v1alpha1.ProxyMode = "iptables"
	// ModeNFTables programs Services with nftables.
	ModeNFTables v1alpha1.ProxyMode = "nftables"
	// ModeUserspace forwards Service traffic through a userspace proxy.
	ModeUserspace v1alpha1.ProxyMode = "userspace"
	// ModeIPVS is upstream's IPVS mode; nodeproxy refuses it.
	ModeIPVS v1alpha1.ProxyMode = "ipvs"
)

// Local-traffic detection modes (detectLocalMode).
const (
	// LocalModeClusterCIDR treats traffic from clusterCIDR as local.
	LocalModeClusterCIDR v1alpha1.LocalMode = "ClusterCIDR"
	// LocalModeNodeCIDR treats traffic from the Node's podCIDRs as local.
	LocalModeNodeCIDR v1alpha1.LocalMode = "NodeCIDR"
	// LocalModeBridgeInterface treats traffic from detectLocal.bridgeInterface as local.
	LocalModeBridgeInterface v1alpha1.LocalMode = "BridgeInterface"
	// LocalModeInterfaceNamePrefix treats traffic from interfaces named
	// detectLocal.interfaceNamePrefix* as local.
	LocalModeInterfaceNamePrefix v1alpha1.LocalMode = "InterfaceNamePrefix"
)

// Keywords accepted in nodePortAddresses besides CIDRs.
const (
	// NodePortAddressesPrimary is the Node object's primary IP(s).
	NodePortAddressesPrimary = "primary"
	// NodePortAddressesLocalhost is 127.0.0.0/8 and ::1/128.
	NodePortAddressesLocalhost = "localhost"
	// NodePortAddressesAll is 0.0.0.0/0 and ::/0.
	NodePortAddressesAll = "all"
)

// Default values, as upstream's v1alpha1 defaults.go and pkg/cluster/ports.
const (
	// DefaultHealthzPort is the default port of the /healthz server.
	DefaultHealthzPort = 10256
	// DefaultMetricsPort is the default port of the /metrics server.
	DefaultMetricsPort = 10249
	// DefaultOOMScoreAdj is the default oom_score_adj of the process.
	DefaultOOMScoreAdj int32 = -999
	// DefaultMasqueradeBit is the default fwmark bit used to mark packets for SNAT.
	DefaultMasqueradeBit int32 = 14
	// DefaultSyncPeriod is the default iptables/nftables syncPeriod.
	DefaultSyncPeriod = 30 * time.Second
	// DefaultMinSyncPeriod is the default iptables/nftables minSyncPeriod.
	DefaultMinSyncPeriod = 1 * time.Second
	// DefaultConfigSyncPeriod is the default informer resync period.
	DefaultConfigSyncPeriod = 15 * time.Minute
	// DefaultContentType is the default content type for API requests.
	DefaultContentType = "application/vnd.kubernetes.protobuf"
	// DefaultQPS is the default client-side QPS limit towards the API server.
	DefaultQPS float32 = 5
	// DefaultBurst is the default client-side burst towards the API server.
	DefaultBurst int32 = 10
)

const (
	configAPIVersion = "kubeproxy.config.k8s.io/v1alpha1"
	configKind       = "KubeProxyConfiguration"
)

// newDefaultConfiguration returns a fully defaulted v1alpha1 configuration.
func newDefaultConfiguration() *v1alpha1.KubeProxyConfiguration {
	cfg := &v1alpha1.KubeProxyConfiguration{}
	setDefaults(cfg)
	return cfg
}

// setDefaults fills every unset field of cfg with upstream's v1alpha1
// default (pkg/proxy/apis/config/v1alpha1/defaults.go). It does not apply the
// platform defaults (mode, detectLocalMode, nodePortAddresses), which depend
// on the final mode and are applied by Complete.
func setDefaults(cfg *v1alpha1.KubeProxyConfiguration) {
	cfg.APIVersion = configAPIVersion
	cfg.Kind = configKind
	if cfg.BindAddress == "" {
		cfg.BindAddress = "0.0.0.0"
	}
	healthzHost, metricsHost := defaultServerHosts(cfg.BindAddress)
	if cfg.HealthzBindAddress == "" {
		cfg.HealthzBindAddress = net.JoinHostPort(healthzHost, strconv.Itoa(DefaultHealthzPort))
	} else {
		cfg.HealthzBindAddress = appendPortIfNeeded(cfg.HealthzBindAddress, DefaultHealthzPort)
	}
	if cfg.MetricsBindAddress == "" {
		cfg.MetricsBindAddress = net.JoinHostPort(metricsHost, strconv.Itoa(DefaultMetricsPort))
	} else {
		cfg.MetricsBindAddress = appendPortIfNeeded(cfg.MetricsBindAddress, DefaultMetricsPort)
	}
	if cfg.OOMScoreAdj == nil {
		cfg.OOMScoreAdj = ptr.To(DefaultOOMScoreAdj)
	}
	setModeBlockDefaults(cfg)
	setConntrackDefaults(&cfg.Conntrack)
	if cfg.ConfigSyncPeriod.Duration == 0 {
		cfg.ConfigSyncPeriod.Duration = DefaultConfigSyncPeriod
	}
	if cfg.ClientConnection.ContentType == "" {
		cfg.ClientConnection.ContentType = DefaultContentType
	}
	if cfg.ClientConnection.QPS == 0 {
		cfg.ClientConnection.QPS = DefaultQPS
	}
	if cfg.ClientConnection.Burst == 0 {
		cfg.ClientConnection.Burst = DefaultBurst
	}
	if cfg.FeatureGates == nil {
		cfg.FeatureGates = map[string]bool{}
	}
	logsapi.SetRecommendedLoggingConfiguration(&cfg.Logging)
}

// setModeBlockDefaults defaults the iptables, ipvs and nftables blocks.
func setModeBlockDefaults(cfg *v1alpha1.KubeProxyConfiguration) {
	defaultDuration(&cfg.IPTables.SyncPeriod, DefaultSyncPeriod)
	defaultDuration(&cfg.IPTables.MinSyncPeriod, DefaultMinSyncPeriod)
	if cfg.IPTables.LocalhostNodePorts == nil {
		cfg.IPTables.LocalhostNodePorts = ptr.To(true)
	}
	if cfg.IPTables.MasqueradeBit == nil {
		cfg.IPTables.MasqueradeBit = ptr.To(DefaultMasqueradeBit)
	}
	// Upstream defaults only ipvs.syncPeriod, not ipvs.minSyncPeriod.
	defaultDuration(&cfg.IPVS.SyncPeriod, DefaultSyncPeriod)
	defaultDuration(&cfg.NFTables.SyncPeriod, DefaultSyncPeriod)
	defaultDuration(&cfg.NFTables.MinSyncPeriod, DefaultMinSyncPeriod)
	if cfg.NFTables.MasqueradeBit == nil {
		cfg.NFTables.MasqueradeBit = ptr.To(DefaultMasqueradeBit)
	}
}

// setConntrackDefaults defaults the conntrack block. udpTimeout and
// udpStreamTimeout stay 0 ("leave the kernel value alone").
func setConntrackDefaults(ct *v1alpha1.KubeProxyConntrackConfiguration) {
	if ct.MaxPerCore == nil {
		ct.MaxPerCore = ptr.To[int32](32 * 1024)
	}
	if ct.Min == nil {
		ct.Min = ptr.To[int32](128 * 1024)
	}
	if ct.TCPEstablishedTimeout == nil {
		ct.TCPEstablishedTimeout = &metav1.Duration{Duration: 24 * time.Hour}
	}
	if ct.TCPCloseWaitTimeout == nil {
		ct.TCPCloseWaitTimeout = &metav1.Duration{Duration: 1 * time.Hour}
	}
}

// defaultDuration sets *d to def when it is zero.
func defaultDuration(d *metav1.Duration, def time.Duration) {
	if d.Duration == 0 {
		d.Duration = def
	}
}

// defaultServerHosts returns the default healthz and metrics hosts for a
// bind address: IPv4 wildcard/loopback unless bindAddress is IPv6.
func defaultServerHosts(bindAddress string) (healthz, metrics string) {
	if ip := netutils.ParseIPSloppy(bindAddress); ip != nil && ip.To4() != nil {
		return "0.0.0.0", "127.0.0.1"
	}
	return "::", "::1"
}

// appendPortIfNeeded turns a bare IP into IP:port; anything else (already
// host:port, or invalid, which validation reports) is returned unchanged.
func appendPortIfNeeded(addr string, port int32) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if netutils.ParseIPSloppy(addr) == nil {
		return addr
	}
	return net.JoinHostPort(addr, strconv.Itoa(int(port)))
}

// applyPlatformDefaults applies the Linux defaults that upstream applies after
// flags and the config file are merged (server_linux.go
// platformApplyDefaults). It reports whether the mode was defaulted.
func applyPlatformDefaults(cfg *v1alpha1.KubeProxyConfiguration) (modeDefaulted bool) {
	if cfg.Mode == "" {
		cfg.Mode = ModeIPTables
		modeDefaulted = true
	}
	if cfg.Mode == ModeNFTables && len(cfg.NodePortAddresses) == 0 {
		cfg.NodePortAddresses = []string{NodePortAddressesPrimary}
	}
	if cfg.DetectLocalMode == "" {
		cfg.DetectLocalMode = LocalModeClusterCIDR
	}
	return modeDefaulted
}

// modeSettings are the settings that upstream's internal configuration keeps
// once and that the v1alpha1 format spreads over per-mode blocks.
type modeSettings struct {
	syncPeriod    time.Duration
	minSyncPeriod time.Duration
	masqueradeAll bool
}

// activeModeSettings reads the mode-selected settings from cfg: the nftables
// block in nftables mode, the ipvs block (periods only) in ipvs mode, and the
// iptables block otherwise (iptables, userspace, "").
func activeModeSettings(cfg *v1alpha1.KubeProxyConfiguration) modeSettings {
	switch cfg.Mode {
	case ModeNFTables:
		return modeSettings{cfg.NFTables.SyncPeriod.Duration, cfg.NFTables.MinSyncPeriod.Duration, cfg.NFTables.MasqueradeAll}
	case ModeIPVS:
		return modeSettings{cfg.IPVS.SyncPeriod.Duration, cfg.IPVS.MinSyncPeriod.Duration, cfg.IPTables.MasqueradeAll}
	default:
		return modeSettings{cfg.IPTables.SyncPeriod.Duration, cfg.IPTables.MinSyncPeriod.Duration, cfg.IPTables.MasqueradeAll}
	}
}

// normalizeModeBlocks rewrites the per-mode blocks the way upstream's
// v1alpha1 → internal → v1alpha1 round trip does: only the active mode's block
// keeps syncPeriod/minSyncPeriod/masqueradeAll, the others show zero.
func normalizeModeBlocks(cfg *v1alpha1.KubeProxyConfiguration, s modeSettings) {
	for _, p := range []*metav1.Duration{
		&cfg.IPTables.SyncPeriod, &cfg.IPTables.MinSyncPeriod,
		&cfg.IPVS.SyncPeriod, &cfg.IPVS.MinSyncPeriod,
		&cfg.NFTables.SyncPeriod, &cfg.NFTables.MinSyncPeriod,
	} {
		p.Duration = 0
	}
	cfg.IPTables.MasqueradeAll = false
	cfg.NFTables.MasqueradeAll = false
	switch cfg.Mode {
	case ModeNFTables:
		cfg.NFTables.SyncPeriod.Duration = s.syncPeriod
		cfg.NFTables.MinSyncPeriod.Duration = s.minSyncPeriod
		cfg.NFTables.MasqueradeAll = s.masqueradeAll
	case ModeIPVS:
		cfg.IPVS.SyncPeriod.Duration = s.syncPeriod
		cfg.IPVS.MinSyncPeriod.Duration = s.minSyncPeriod
		cfg.IPTables.MasqueradeAll = s.masqueradeAll
	default:
		cfg.IPTables.SyncPeriod.Duration = s.syncPeriod
		cfg.IPTables.MinSyncPeriod.Duration = s.minSyncPeriod
		cfg.IPTables.MasqueradeAll = s.masqueradeAll
	}
}

// splitClusterCIDRs splits the comma-separated clusterCIDR field; an empty
// field yields nil.
func splitClusterCIDRs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
