package app

import (
	"net/netip"
	"strings"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
)

// Version is the version nodeproxy reports (--version, metrics).
var Version = "v1.37.2-nodeproxy"

// Config is everything the proxy server needs, resolved from flags and the
// config file, defaulted and validated. Build it with Options.Config.
type Config struct {
	// KubeProxyConfiguration is the effective configuration in its published
	// v1alpha1 form, as --write-config-to writes it (and /configz serves it):
	// only the active mode's block carries syncPeriod, minSyncPeriod and
	// masqueradeAll; the other blocks show zero values.
	KubeProxyConfiguration *v1alpha1.KubeProxyConfiguration

	// ConfigFile is the --config path ("" without one). Upstream exits when
	// this file changes so that the new content is picked up on restart.
	ConfigFile string
	// Mode is the proxy mode: ModeIPTables, ModeNFTables or ModeUserspace.
	Mode v1alpha1.ProxyMode
	// ModeDefaulted is true when no mode was configured and iptables was
	// chosen; the server should report DefaultModeWarning as a Node event.
	ModeDefaulted bool
	// SyncPeriod is the retry interval after a failed sync, the iptables
	// canary poll interval and half the /healthz staleness timeout.
	SyncPeriod time.Duration
	// MinSyncPeriod is the minimum interval between two rule syncs.
	MinSyncPeriod time.Duration
	// ConfigSyncPeriod is the informers' resync period.
	ConfigSyncPeriod time.Duration
	// MasqueradeAll SNATs all traffic sent to Service cluster IPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit marking packets for SNAT (0..31), from
	// the nftables block in nftables mode and the iptables block otherwise.
	MasqueradeBit int32
	// LocalhostNodePorts allows NodePorts on 127.0.0.0/8 (iptables mode, IPv4).
	LocalhostNodePorts bool

	// ClusterCIDRs are the pod CIDRs (at most one per IP family).
	ClusterCIDRs []netip.Prefix
	// DetectLocalMode selects how traffic from local pods is recognised.
	DetectLocalMode v1alpha1.LocalMode
	// BridgeInterface is the pod bridge for LocalModeBridgeInterface.
	BridgeInterface string
	// InterfaceNamePrefix is the pod interface prefix for LocalModeInterfaceNamePrefix.
	InterfaceNamePrefix string
	// NodePortAddresses are CIDRs and keywords ("primary", "localhost",
	// "all") selecting where NodePorts are served; empty means all.
	NodePortAddresses []string

	// HostnameOverride is the configured node name override ("" for none).
	HostnameOverride string
	// NodeName is the node name in use: HostnameOverride or the OS host
	// name, trimmed and lowercased.
	NodeName string
	// Kubeconfig is the kubeconfig path ("" with no Master: in-cluster).
	Kubeconfig string
	// Master overrides the API server URL of the kubeconfig.
	Master string
	// ContentType is the content type of API requests.
	ContentType string
	// AcceptContentTypes is the Accept header of API requests ("" = default).
	AcceptContentTypes string
	// QPS is the client-side request rate limit towards the API server.
	QPS float32
	// Burst is the client-side burst towards the API server.
	Burst int32

	// HealthzBindAddress is the IP:port of the /healthz server ("" disables it).
	HealthzBindAddress string
	// MetricsBindAddress is the IP:port of the /metrics server.
	MetricsBindAddress string
	// BindAddress overrides the node's primary IP when not unspecified.
	BindAddress string
	// BindAddressHardFail makes a failure to bind a server port fatal.
	BindAddressHardFail bool
	// EnableProfiling serves /debug/pprof on the metrics server.
	EnableProfiling bool
	// ShowHiddenMetricsForVersion re-enables metrics hidden since that version.
	ShowHiddenMetricsForVersion string
	// OOMScoreAdj is the process's oom_score_adj.
	OOMScoreAdj int32
	// Conntrack holds the conntrack sysctl settings.
	Conntrack ConntrackConfig

	// Source is "" (API server) or "file:DIR".
	Source string
	// SourceDir is DIR of a "file:DIR" source, "" for the API server.
	SourceDir string
	// Cleanup requests removing all proxy rules and exiting.
	Cleanup bool
	// InitOnly requests privileged initialisation only, then exit.
	InitOnly bool
	// FeatureGates is the effective state of every feature gate nodeproxy
	// knows (see the Feature* constants).
	FeatureGates map[string]bool
	// Userspace holds the userspace mode's limits.
	Userspace UserspaceConfig
	// Version is the version to report (Version, or --version=vX.Y.Z).
	Version string
}

// ConntrackConfig holds the conntrack settings; zero durations mean "leave
// the kernel's value alone", MaxPerCore 0 means leave nf_conntrack_max alone.
type ConntrackConfig struct {
	// MaxPerCore is the number of conntrack entries per CPU.
	MaxPerCore int32
	// Min is the minimum nf_conntrack_max regardless of MaxPerCore.
	Min int32
	// TCPEstablishedTimeout is the idle timeout of established TCP flows.
	TCPEstablishedTimeout time.Duration
	// TCPCloseWaitTimeout is the timeout of TCP flows in CLOSE_WAIT.
	TCPCloseWaitTimeout time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal.
	TCPBeLiberal bool
	// UDPTimeout is the timeout of unreplied UDP flows.
	UDPTimeout time.Duration
	// UDPStreamTimeout is the timeout of assured UDP flows.
	UDPStreamTimeout time.Duration
}

// Config returns the resolved configuration. Call it only after Complete and
// Validate succeeded; before that it returns nil.
func (o *Options) Config() *Config {
	if !o.completed {
		return nil
	}
	c := o.config.DeepCopy()
	masqueradeBit := *c.IPTables.MasqueradeBit
	if c.Mode == ModeNFTables {
		masqueradeBit = *c.NFTables.MasqueradeBit
	}
	ct := &c.Conntrack
	cfg := &Config{
		KubeProxyConfiguration:      c,
		ConfigFile:                  o.ConfigFile,
		Mode:                        c.Mode,
		ModeDefaulted:               o.modeDefaulted,
		SyncPeriod:                  o.modeSettings.syncPeriod,
		MinSyncPeriod:               o.modeSettings.minSyncPeriod,
		ConfigSyncPeriod:            c.ConfigSyncPeriod.Duration,
		MasqueradeAll:               o.modeSettings.masqueradeAll,
		MasqueradeBit:               masqueradeBit,
		LocalhostNodePorts:          *c.IPTables.LocalhostNodePorts,
		ClusterCIDRs:                parseClusterCIDRs(c.ClusterCIDR),
		DetectLocalMode:             c.DetectLocalMode,
		BridgeInterface:             c.DetectLocal.BridgeInterface,
		InterfaceNamePrefix:         c.DetectLocal.InterfaceNamePrefix,
		NodePortAddresses:           append([]string(nil), c.NodePortAddresses...),
		HostnameOverride:            c.HostnameOverride,
		NodeName:                    o.nodeName,
		Kubeconfig:                  c.ClientConnection.Kubeconfig,
		Master:                      o.Master,
		ContentType:                 c.ClientConnection.ContentType,
		AcceptContentTypes:          c.ClientConnection.AcceptContentTypes,
		QPS:                         c.ClientConnection.QPS,
		Burst:                       c.ClientConnection.Burst,
		HealthzBindAddress:          c.HealthzBindAddress,
		MetricsBindAddress:          c.MetricsBindAddress,
		BindAddress:                 c.BindAddress,
		BindAddressHardFail:         c.BindAddressHardFail,
		EnableProfiling:             c.EnableProfiling,
		ShowHiddenMetricsForVersion: c.ShowHiddenMetricsForVersion,
		OOMScoreAdj:                 *c.OOMScoreAdj,
		Conntrack: ConntrackConfig{
			MaxPerCore:            *ct.MaxPerCore,
			Min:                   *ct.Min,
			TCPEstablishedTimeout: ct.TCPEstablishedTimeout.Duration,
			TCPCloseWaitTimeout:   ct.TCPCloseWaitTimeout.Duration,
			TCPBeLiberal:          ct.TCPBeLiberal,
			UDPTimeout:            ct.UDPTimeout.Duration,
			UDPStreamTimeout:      ct.UDPStreamTimeout.Duration,
		},
		Source:       o.Source,
		SourceDir:    strings.TrimPrefix(o.Source, SourceFilePrefix),
		Cleanup:      o.Cleanup,
		InitOnly:     o.InitOnly,
		FeatureGates: copyGates(o.featureGates),
		Version:      o.reportedVersion(),
		Userspace:    o.Userspace,
	}
	return cfg
}

// reportedVersion is Version unless --version=vX.Y.Z overrode it.
func (o *Options) reportedVersion() string {
	if strings.HasPrefix(o.VersionFlag, "v") {
		return o.VersionFlag
	}
	return Version
}

// parseClusterCIDRs converts the comma-separated clusterCIDR field. Invalid
// entries (only possible when detectLocalMode is not ClusterCIDR, as
// upstream validates them only then) are skipped with a log line.
func parseClusterCIDRs(field string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range splitClusterCIDRs(field) {
		_, ipNet, err := netutils.ParseCIDRSloppy(s)
		if err != nil {
			klog.InfoS("Ignoring invalid clusterCIDR entry", "cidr", s, "err", err)
			continue
		}
		addr, ok := netip.AddrFromSlice(ipNet.IP)
		if !ok {
			klog.InfoS("Ignoring invalid clusterCIDR entry", "cidr", s)
			continue
		}
		ones, _ := ipNet.Mask.Size()
		out = append(out, netip.PrefixFrom(addr.Unmap(), ones))
	}
	return out
}

// copyGates returns a copy of a gate map.
func copyGates(in map[string]bool) map[string]bool {
	out := make(map[string]bool, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}
