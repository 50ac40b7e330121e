// Package app is nodeproxy's command-line and configuration layer: it accepts
// every kube-proxy v1.37 flag and KubeProxyConfiguration file, merges them
// with upstream's precedence rules, defaults and validates the result, and
// hands the server a resolved Config.
package app

import (
	"strings"
	"time"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// Options holds the command-line state of the proxy. Flags bound to the
// configuration write into a defaulted v1alpha1 KubeProxyConfiguration; with
// --config that configuration is replaced by the file's (see Complete).
type Options struct {
	// ConfigFile is the path of a KubeProxyConfiguration file (--config).
	ConfigFile string
	// WriteConfigTo is where to write the effective configuration before
	// exiting (--write-config-to).
	WriteConfigTo string
	// Cleanup makes the proxy remove its rules and exit (--cleanup).
	Cleanup bool
	// InitOnly makes the proxy do its privileged setup and exit (--init-only).
	InitOnly bool
	// Master overrides the API server URL of the kubeconfig (--master).
	Master string
	// Source selects where Services, EndpointSlices and the Node come from:
	// "" for the API server, "file:DIR" for YAML files in DIR (--source).
	Source string
	// VersionFlag is the value of --version: "false", "true", "raw" or a
	// "vX.Y.Z" that overrides the reported version.
	VersionFlag string
	// Userspace holds the userspace mode's limits (--userspace-*).
	Userspace UserspaceConfig

	// config is the flag-bound configuration until Complete, then the
	// effective one.
	config *v1alpha1.KubeProxyConfiguration

	// Flags that do not map one-to-one onto a v1alpha1 field.
	hostnameOverride      string
	healthzPort           int32
	metricsPort           int32
	masqueradeAll         bool
	iptablesSyncPeriod    time.Duration
	iptablesMinSyncPeriod time.Duration
	ipvsSyncPeriod        time.Duration
	ipvsMinSyncPeriod     time.Duration
	clusterCIDRs          string

	// Results of Complete.
	completed     bool
	modeDefaulted bool
	modeSettings  modeSettings
	featureGates  map[string]bool
	nodeName      string
}

// NewOptions returns Options whose configuration holds upstream's defaults;
// AddFlags uses these values as the flags' defaults.
func NewOptions() *Options {
	cfg := newDefaultConfiguration()
	return &Options{
		config:                cfg,
		VersionFlag:           versionFlagFalse,
		Userspace:             defaultUserspaceConfig(),
		healthzPort:           DefaultHealthzPort,
		metricsPort:           DefaultMetricsPort,
		masqueradeAll:         cfg.IPTables.MasqueradeAll,
		iptablesSyncPeriod:    cfg.IPTables.SyncPeriod.Duration,
		iptablesMinSyncPeriod: cfg.IPTables.MinSyncPeriod.Duration,
		// Upstream shows the internal (iptables-derived) periods as the
		// defaults of the ipvs flags too.
		ipvsSyncPeriod:    cfg.IPTables.SyncPeriod.Duration,
		ipvsMinSyncPeriod: cfg.IPTables.MinSyncPeriod.Duration,
		clusterCIDRs:      cfg.ClusterCIDR,
	}
}

// AddFlags registers every kube-proxy v1.37 flag (plus nodeproxy's --mode
// alias and --source) on fs, bound to o. Each flag's default is the current
// value of the field it is bound to.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.addGeneralFlags(fs)
	o.addClientFlags(fs)
	o.addServerFlags(fs)
	o.addModeFlags(fs)
	o.addNetworkFlags(fs)
	o.addConntrackFlags(fs)
	o.addDeprecatedFlags(fs)
	o.addUserspaceFlags(fs)
	addLoggingFlags(fs, &o.config.Logging)
}

// ignoredWithConfig is appended to the help of flags that --config overrides.
const ignoredWithConfig = " This parameter is ignored if a config file is specified by --config."

// addGeneralFlags registers the flags not bound to a config field (plus
// --feature-gates and --hostname-override).
func (o *Options) addGeneralFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile, "The path to the configuration file.")
	fs.StringVar(&o.WriteConfigTo, "write-config-to", o.WriteConfigTo, "If set, write the effective configuration to this file and exit.")
	fs.BoolVar(&o.Cleanup, "cleanup", o.Cleanup, "If true cleanup iptables and ipvs rules and exit.")
	fs.BoolVar(&o.InitOnly, "init-only", o.InitOnly, "If true, perform the initialization steps that need full root privileges, then exit. The proxy can then run with only CAP_NET_ADMIN.")
	fs.Var(cliflag.NewMapStringBool(&o.config.FeatureGates), "feature-gates", "A set of key=value pairs that describe feature gates for alpha/experimental features. Options are:\n"+
		knownFeaturesHelp()+"\n"+strings.TrimSpace(ignoredWithConfig))
	fs.StringVar(&o.hostnameOverride, "hostname-override", o.hostnameOverride, "If non-empty, the name of the Node this proxy runs on (otherwise the host name). Applied even when --config is given.")
	fs.StringVar(&o.Source, "source", o.Source, `nodeproxy only: where Services, EndpointSlices and the Node come from. "" means the API server; "file:DIR" reads them from YAML files in DIR, without a cluster.`)
	versionValue := versionFlag{target: &o.VersionFlag}
	fs.Var(versionValue, "version", "--version, --version=raw prints version information and quits; --version=vX.Y.Z... sets the reported version")
	fs.Lookup("version").NoOptDefVal = versionFlagTrue
}

// addClientFlags registers the API client flags.
func (o *Options) addClientFlags(fs *pflag.FlagSet) {
	cc := &o.config.ClientConnection
	fs.StringVar(&cc.Kubeconfig, "kubeconfig", cc.Kubeconfig, "Path to kubeconfig file with authorization information (the master location can be overridden by the master flag).")
	fs.StringVar(&o.Master, "master", o.Master, "The address of the Kubernetes API server (overrides any value in kubeconfig)")
	fs.StringVar(&cc.ContentType, "kube-api-content-type", cc.ContentType, "Content type of requests sent to apiserver.")
	fs.Int32Var(&cc.Burst, "kube-api-burst", cc.Burst, "Burst to use while talking with kubernetes apiserver")
	fs.Float32Var(&cc.QPS, "kube-api-qps", cc.QPS, "QPS to use while talking with kubernetes apiserver")
	fs.DurationVar(&o.config.ConfigSyncPeriod.Duration, "config-sync-period", o.config.ConfigSyncPeriod.Duration, "How often configuration from the apiserver is refreshed.  Must be greater than 0.")
}

// addServerFlags registers the healthz/metrics server and process flags.
func (o *Options) addServerFlags(fs *pflag.FlagSet) {
	c := o.config
	fs.Var(ipFlag{target: &c.BindAddress}, "bind-address", "Overrides the proxy's idea of its node's primary IP (no socket is bound to it)."+ignoredWithConfig)
	fs.Var(ipPortFlag{target: &c.HealthzBindAddress}, "healthz-bind-address", `The IP address and port for the health check server to serve on, defaulting to "0.0.0.0:10256".`+ignoredWithConfig)
	fs.Var(ipPortFlag{target: &c.MetricsBindAddress}, "metrics-bind-address", `The IP address and port for the metrics server to serve on, defaulting to "127.0.0.1:10249". (Set to "0.0.0.0:10249" / "[::]:10249" to bind on all interfaces.)`+ignoredWithConfig)
	fs.BoolVar(&c.BindAddressHardFail, "bind-address-hard-fail", c.BindAddressHardFail, "If true the proxy treats failure to bind to a port as fatal and exits")
	fs.BoolVar(&c.EnableProfiling, "profiling", c.EnableProfiling, "If true enables profiling via web interface on /debug/pprof handler."+ignoredWithConfig)
	fs.StringVar(&c.ShowHiddenMetricsForVersion, "show-hidden-metrics-for-version", c.ShowHiddenMetricsForVersion,
		"The previous version for which you want to show hidden metrics, as <major>.<minor> (e.g. '1.36'). Only the previous minor version is meaningful."+ignoredWithConfig)
	fs.Int32Var(c.OOMScoreAdj, "oom-score-adj", *c.OOMScoreAdj, "The oom-score-adj value for the proxy process. Values must be within the range [-1000, 1000]."+ignoredWithConfig)
}

// addModeFlags registers the proxy mode and per-mode (iptables, ipvs) flags.
func (o *Options) addModeFlags(fs *pflag.FlagSet) {
	c := o.config
	mode := proxyModeFlag{target: &c.Mode}
	fs.Var(mode, "proxy-mode", "Which proxy mode to use: 'iptables' (default), 'nftables' or 'userspace'. ('ipvs' is not supported by nodeproxy.)"+ignoredWithConfig)
	fs.Var(mode, "mode", "Alias of --proxy-mode.")
	fs.Int32Var(c.IPTables.MasqueradeBit, "iptables-masquerade-bit", *c.IPTables.MasqueradeBit, "If using the iptables or ipvs proxy mode, the bit of the fwmark space to mark packets requiring SNAT with.  Must be within the range [0, 31].")
	fs.BoolVar(&o.masqueradeAll, "masquerade-all", o.masqueradeAll, "SNAT all traffic sent via Service cluster IPs. This may be required with some CNI plugins. Only supported on Linux.")
	fs.BoolVar(c.IPTables.LocalhostNodePorts, "iptables-localhost-nodeports", *c.IPTables.LocalhostNodePorts, "If false, disable the legacy behavior of allowing NodePort services to be accessed via localhost. (Applies only to iptables mode and IPv4.)")
	fs.DurationVar(&o.iptablesSyncPeriod, "iptables-sync-period", o.iptablesSyncPeriod, "An interval (e.g. '5s', '1m', '2h22m') indicating how frequently various re-synchronizing and cleanup operations are performed. Must be greater than 0.")
	fs.DurationVar(&o.iptablesMinSyncPeriod, "iptables-min-sync-period", o.iptablesMinSyncPeriod, "The minimum period between rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate resync.")
	ipvs := &c.IPVS
	fs.DurationVar(&o.ipvsSyncPeriod, "ipvs-sync-period", o.ipvsSyncPeriod, "Accepted for compatibility; only used by the ipvs mode, which nodeproxy does not have.")
	fs.DurationVar(&o.ipvsMinSyncPeriod, "ipvs-min-sync-period", o.ipvsMinSyncPeriod, "Accepted for compatibility; only used by the ipvs mode.")
	fs.StringVar(&ipvs.Scheduler, "ipvs-scheduler", ipvs.Scheduler, "Accepted for compatibility; only used by the ipvs mode.")
	fs.StringSliceVar(&ipvs.ExcludeCIDRs, "ipvs-exclude-cidrs", ipvs.ExcludeCIDRs, "Accepted for compatibility; only used by the ipvs mode.")
	fs.BoolVar(&ipvs.StrictARP, "ipvs-strict-arp", ipvs.StrictARP, "Accepted for compatibility; only used by the ipvs mode.")
	fs.DurationVar(&ipvs.TCPTimeout.Duration, "ipvs-tcp-timeout", ipvs.TCPTimeout.Duration, "Accepted for compatibility; only used by the ipvs mode.")
	fs.DurationVar(&ipvs.TCPFinTimeout.Duration, "ipvs-tcpfin-timeout", ipvs.TCPFinTimeout.Duration, "Accepted for compatibility; only used by the ipvs mode.")
	fs.DurationVar(&ipvs.UDPTimeout.Duration, "ipvs-udp-timeout", ipvs.UDPTimeout.Duration, "Accepted for compatibility; only used by the ipvs mode.")
}

// addNetworkFlags registers the local-traffic detection and NodePort flags.
func (o *Options) addNetworkFlags(fs *pflag.FlagSet) {
	c := o.config
	fs.Var(localModeFlag{target: &c.DetectLocalMode}, "detect-local-mode", "Mode to use to detect local traffic: ClusterCIDR (default), NodeCIDR, BridgeInterface or InterfaceNamePrefix."+ignoredWithConfig)
	fs.StringVar(&c.DetectLocal.BridgeInterface, "pod-bridge-interface", c.DetectLocal.BridgeInterface, "A bridge interface name. With --detect-local-mode=BridgeInterface, traffic originating from this bridge is local.")
	fs.StringVar(&c.DetectLocal.InterfaceNamePrefix, "pod-interface-name-prefix", c.DetectLocal.InterfaceNamePrefix, "An interface name prefix. With --detect-local-mode=InterfaceNamePrefix, traffic originating from any interface whose name begins with this prefix is local.")
	fs.StringVar(&o.clusterCIDRs, "cluster-cidr", o.clusterCIDRs, "The CIDR range of the pods in the cluster (a comma-separated dual-stack pair for dual-stack clusters). With --detect-local-mode=ClusterCIDR, traffic from this range is local."+ignoredWithConfig)
	fs.StringSliceVar(&c.NodePortAddresses, "nodeport-addresses", c.NodePortAddresses,
		"A list of CIDR ranges and/or keywords ('primary', 'localhost', 'all') selecting the node IPs on which NodePort services are served. If unset, this defaults to 'all' in iptables mode and to 'primary' in nftables mode."+ignoredWithConfig)
}

// addConntrackFlags registers the conntrack sysctl flags.
func (o *Options) addConntrackFlags(fs *pflag.FlagSet) {
	ct := &o.config.Conntrack
	fs.Int32Var(ct.MaxPerCore, "conntrack-max-per-core", *ct.MaxPerCore, "Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min).")
	fs.Int32Var(ct.Min, "conntrack-min", *ct.Min, "Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core (set conntrack-max-per-core=0 to leave the limit as-is).")
	fs.DurationVar(&ct.TCPEstablishedTimeout.Duration, "conntrack-tcp-timeout-established", ct.TCPEstablishedTimeout.Duration, "Idle timeout for established TCP connections (0 to leave as-is)")
	fs.DurationVar(&ct.TCPCloseWaitTimeout.Duration, "conntrack-tcp-timeout-close-wait", ct.TCPCloseWaitTimeout.Duration, "NAT timeout for TCP connections in the CLOSE_WAIT state")
	fs.BoolVar(&ct.TCPBeLiberal, "conntrack-tcp-be-liberal", ct.TCPBeLiberal, "Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1")
	fs.DurationVar(&ct.UDPTimeout.Duration, "conntrack-udp-timeout", ct.UDPTimeout.Duration, "Idle timeout for UNREPLIED UDP connections (0 to leave as-is)")
	fs.DurationVar(&ct.UDPStreamTimeout.Duration, "conntrack-udp-timeout-stream", ct.UDPStreamTimeout.Duration, "Idle timeout for ASSURED UDP connections (0 to leave as-is)")
}

// addDeprecatedFlags registers --healthz-port and --metrics-port, which pflag
// reports as deprecated on stderr when used.
func (o *Options) addDeprecatedFlags(fs *pflag.FlagSet) {
	fs.Int32Var(&o.healthzPort, "healthz-port", o.healthzPort, "The port to bind the health check server. Use 0 to disable.")
	// MarkDeprecated only fails for an unregistered name.
	_ = fs.MarkDeprecated("healthz-port", "This flag is deprecated and will be removed in a future release. Please use --healthz-bind-address instead.")
	fs.Int32Var(&o.metricsPort, "metrics-port", o.metricsPort, "The port to bind the metrics server. Use 0 to disable.")
	_ = fs.MarkDeprecated("metrics-port", "This flag is deprecated and will be removed in a future release. Please use --metrics-bind-address instead.")
}
