package app

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
)

// SourceFilePrefix starts a --source value that reads objects from files.
const SourceFilePrefix = "file:"

// fieldErrors collects validation errors, each "path (--flag): reason".
type fieldErrors struct {
	// flagHints is false when the configuration came from a file, in which
	// case naming the (ignored) flag would mislead.
	flagHints bool
	errs      []string
}

// add records an error for the field at path (a v1alpha1 JSON path) whose
// command-line equivalent is flag ("" when there is none).
func (v *fieldErrors) add(path, flag, format string, args ...any) {
	name := path
	if v.flagHints && flag != "" {
		name = fmt.Sprintf("%s (--%s)", path, flag)
	}
	v.errs = append(v.errs, name+": "+fmt.Sprintf(format, args...))
}

// err returns nil or a single-line error listing every problem.
func (v *fieldErrors) err() error {
	if len(v.errs) == 0 {
		return nil
	}
	return errors.New("invalid configuration: " + strings.Join(v.errs, "; "))
}

// Validate checks the completed configuration with upstream's rules
// (pkg/proxy/apis/config/validation) plus nodeproxy's own: the mode must be
// iptables, nftables or userspace, and --source must be "" or "file:DIR".
// Complete must have succeeded first.
func (o *Options) Validate() error {
	if !o.completed {
		return errors.New("validating options: Complete has not been called")
	}
	v := &fieldErrors{flagHints: o.ConfigFile == ""}
	cfg := o.config
	validateMode(v, cfg.Mode)
	validateModeBlocks(v, cfg, o.modeSettings)
	validateConntrack(v, &cfg.Conntrack)
	if adj := *cfg.OOMScoreAdj; adj < -1000 || adj > 1000 {
		v.add("oomScoreAdj", "oom-score-adj", "must be within the range [-1000, 1000], got %d", adj)
	}
	if cfg.ClientConnection.Burst < 0 {
		v.add("clientConnection.burst", "kube-api-burst", "must be greater than or equal to 0, got %d", cfg.ClientConnection.Burst)
	}
	if cfg.ConfigSyncPeriod.Duration <= 0 {
		v.add("configSyncPeriod", "config-sync-period", "must be greater than 0, got %s", cfg.ConfigSyncPeriod.Duration)
	}
	if netutils.ParseIPSloppy(cfg.BindAddress) == nil {
		v.add("bindAddress", "bind-address", "%q is not a valid IP address", cfg.BindAddress)
	}
	if cfg.HealthzBindAddress != "" {
		validateHostPort(v, "healthzBindAddress", "healthz-bind-address", cfg.HealthzBindAddress)
	}
	validateHostPort(v, "metricsBindAddress", "metrics-bind-address", cfg.MetricsBindAddress)
	validateNodePortAddresses(v, cfg.NodePortAddresses)
	validateShowHiddenMetrics(v, cfg.ShowHiddenMetricsForVersion)
	validateDetectLocal(v, cfg)
	validateLogging(v, cfg, o.featureGates)
	validateSource(v, o.Source)
	validateUserspace(v, o.Userspace)
	return v.err()
}

// validateMode accepts the modes nodeproxy implements and explains that ipvs
// is not one of them.
func validateMode(v *fieldErrors, mode v1alpha1.ProxyMode) {
	switch mode {
	case ModeIPTables, ModeNFTables, ModeUserspace:
	case ModeIPVS:
		v.add("mode", "proxy-mode", `"ipvs" is not supported: nodeproxy has no IPVS mode; use "iptables" or "nftables"`)
	default:
		v.add("mode", "proxy-mode", `unsupported value %q: must be "iptables", "nftables" or "userspace" (blank means iptables)`, string(mode))
	}
}

// validateModeBlocks checks masquerade bits and the active mode's periods.
func validateModeBlocks(v *fieldErrors, cfg *v1alpha1.KubeProxyConfiguration, s modeSettings) {
	if bit := *cfg.IPTables.MasqueradeBit; bit < 0 || bit > 31 {
		v.add("iptables.masqueradeBit", "iptables-masquerade-bit", "must be within the range [0, 31], got %d", bit)
	}
	if cfg.Mode == ModeNFTables {
		if bit := *cfg.NFTables.MasqueradeBit; bit < 0 || bit > 31 {
			v.add("nftables.masqueradeBit", "", "must be within the range [0, 31], got %d", bit)
		}
	}
	block := "iptables"
	if cfg.Mode == ModeNFTables {
		block = "nftables"
	}
	if s.syncPeriod <= 0 {
		v.add(block+".syncPeriod", "iptables-sync-period", "must be greater than 0, got %s", s.syncPeriod)
	}
	if s.minSyncPeriod < 0 {
		v.add(block+".minSyncPeriod", "iptables-min-sync-period", "must be greater than or equal to 0, got %s", s.minSyncPeriod)
	}
	if s.minSyncPeriod > s.syncPeriod {
		v.add(block+".minSyncPeriod", "iptables-min-sync-period", "%s must be less than or equal to %s.syncPeriod (%s)", s.minSyncPeriod, block, s.syncPeriod)
	}
}

// validateConntrack requires every conntrack value to be >= 0.
func validateConntrack(v *fieldErrors, ct *v1alpha1.KubeProxyConntrackConfiguration) {
	if *ct.MaxPerCore < 0 {
		v.add("conntrack.maxPerCore", "conntrack-max-per-core", "must be greater than or equal to 0, got %d", *ct.MaxPerCore)
	}
	if *ct.Min < 0 {
		v.add("conntrack.min", "conntrack-min", "must be greater than or equal to 0, got %d", *ct.Min)
	}
	for _, d := range []struct {
		path, flag string
		value      time.Duration
	}{
		{"conntrack.tcpEstablishedTimeout", "conntrack-tcp-timeout-established", ct.TCPEstablishedTimeout.Duration},
		{"conntrack.tcpCloseWaitTimeout", "conntrack-tcp-timeout-close-wait", ct.TCPCloseWaitTimeout.Duration},
		{"conntrack.udpTimeout", "conntrack-udp-timeout", ct.UDPTimeout.Duration},
		{"conntrack.udpStreamTimeout", "conntrack-udp-timeout-stream", ct.UDPStreamTimeout.Duration},
	} {
		if d.value < 0 {
			v.add(d.path, d.flag, "must be greater than or equal to 0, got %s", d.value)
		}
	}
}

// validateHostPort requires "IP:port" with a port in 1..65535.
func validateHostPort(v *fieldErrors, path, flag, value string) {
	host, port, err := net.SplitHostPort(value)
	if err != nil {
		v.add(path, flag, "%q must be IP:port", value)
		return
	}
	if netutils.ParseIPSloppy(host) == nil {
		v.add(path, flag, "%q is not a valid IP address", host)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		v.add(path, flag, "port %q must be a number in 1..65535", port)
	}
}

// validateNodePortAddresses accepts CIDRs and the keywords primary,
// localhost and all, each keyword at most once.
func validateNodePortAddresses(v *fieldErrors, addrs []string) {
	seen := map[string]bool{}
	for i, a := range addrs {
		path := fmt.Sprintf("nodePortAddresses[%d]", i)
		switch a {
		case NodePortAddressesPrimary, NodePortAddressesLocalhost, NodePortAddressesAll:
			if seen[a] {
				v.add(path, "nodeport-addresses", "duplicate keyword %q", a)
			}
			seen[a] = true
			continue
		}
		if _, _, err := netutils.ParseCIDRSloppy(a); err != nil {
			v.add(path, "nodeport-addresses", "%q must be a valid CIDR or one of the keywords 'primary', 'localhost', 'all'", a)
		}
	}
}

// validateShowHiddenMetrics accepts "" or the previous minor version of the
// reported version, as <major>.<minor>.
func validateShowHiddenMetrics(v *fieldErrors, value string) {
	if value == "" {
		return
	}
	major, minor, ok := parseMajorMinor(Version)
	if !ok || minor == 0 {
		return
	}
	want := fmt.Sprintf("%d.%d", major, minor-1)
	gotMajor, gotMinor, ok := parseMajorMinor(value)
	if !ok || gotMajor != major || gotMinor != minor-1 {
		v.add("showHiddenMetricsForVersion", "show-hidden-metrics-for-version", "%q must be omitted or have the value '%s'; only the previous minor version is allowed", value, want)
	}
}

// parseMajorMinor extracts MAJOR and MINOR from "vMAJOR.MINOR[.PATCH...]"
// or "MAJOR.MINOR".
func parseMajorMinor(s string) (major, minor uint64, ok bool) {
	parts := strings.SplitN(strings.TrimPrefix(s, "v"), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, errMajor := strconv.ParseUint(parts[0], 10, 32)
	minor, errMinor := strconv.ParseUint(parts[1], 10, 32)
	return major, minor, errMajor == nil && errMinor == nil
}

// validateDetectLocal checks detectLocalMode and the setting it requires.
func validateDetectLocal(v *fieldErrors, cfg *v1alpha1.KubeProxyConfiguration) {
	switch cfg.DetectLocalMode {
	case LocalModeClusterCIDR:
		if cfg.ClusterCIDR != "" {
			validateClusterCIDRs(v, splitClusterCIDRs(cfg.ClusterCIDR))
		}
	case LocalModeNodeCIDR:
	case LocalModeBridgeInterface:
		if cfg.DetectLocal.BridgeInterface == "" {
			v.add("detectLocal.bridgeInterface", "pod-bridge-interface", "must not be empty when detectLocalMode is BridgeInterface")
		}
	case LocalModeInterfaceNamePrefix:
		if cfg.DetectLocal.InterfaceNamePrefix == "" {
			v.add("detectLocal.interfaceNamePrefix", "pod-interface-name-prefix", "must not be empty when detectLocalMode is InterfaceNamePrefix")
		}
	default:
		v.add("detectLocalMode", "detect-local-mode", `unsupported value %q: must be "ClusterCIDR", "NodeCIDR", "BridgeInterface" or "InterfaceNamePrefix"`, string(cfg.DetectLocalMode))
	}
}

// validateClusterCIDRs requires one CIDR or a dual-stack pair.
func validateClusterCIDRs(v *fieldErrors, cidrs []string) {
	if len(cidrs) > 2 {
		v.add("clusterCIDR", "cluster-cidr", "%q must be a single CIDR or a dual-stack pair of CIDRs, got %d", strings.Join(cidrs, ","), len(cidrs))
		return
	}
	valid := true
	for _, c := range cidrs {
		if _, _, err := netutils.ParseCIDRSloppy(c); err != nil {
			v.add("clusterCIDR", "cluster-cidr", "%q is not a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)", c)
			valid = false
		}
	}
	if valid && len(cidrs) == 2 {
		if dual, err := netutils.IsDualStackCIDRStrings(cidrs); err == nil && !dual {
			v.add("clusterCIDR", "cluster-cidr", "%q must be a single CIDR or a dual-stack pair (one IPv4 and one IPv6 CIDR)", strings.Join(cidrs, ","))
		}
	}
}

// validateLogging checks the logging block like component-base's logsapi,
// for the formats nodeproxy supports (text and json).
func validateLogging(v *fieldErrors, cfg *v1alpha1.KubeProxyConfiguration, gates map[string]bool) {
	l := &cfg.Logging
	if l.Format != logFormatText && l.Format != logFormatJSON {
		v.add("logging.format", "logging-format", `unsupported value %q: must be "text" or "json"`, l.Format)
	}
	if l.FlushFrequency.Duration.Duration <= 0 {
		v.add("logging.flushFrequency", "log-flush-frequency", "must be greater than 0, got %s", l.FlushFrequency.Duration.Duration)
	}
	if uint64(l.Verbosity) > math.MaxInt32 {
		v.add("logging.verbosity", "v", "must be <= %d, got %d", math.MaxInt32, l.Verbosity)
	}
	if len(l.VModule) > 0 && l.Format != logFormatText {
		v.add("logging.vmodule", "vmodule", "only supported for the text log format")
	}
	for i, item := range l.VModule {
		if item.FilePattern == "" || strings.ContainsAny(item.FilePattern, "=,") {
			v.add(fmt.Sprintf("logging.vmodule[%d]", i), "vmodule", "file pattern %q must be non-empty and contain no '=' or ','", item.FilePattern)
		}
	}
	if gates[FeatureLoggingAlphaOptions] {
		return
	}
	for _, o := range []struct {
		path, flag string
		set        bool
	}{
		{"logging.options.text.splitStream", "log-text-split-stream", l.Options.Text.SplitStream},
		{"logging.options.text.infoBufferSize", "log-text-info-buffer-size", l.Options.Text.InfoBufferSize.Value() != 0},
		{"logging.options.json.splitStream", "log-json-split-stream", l.Options.JSON.SplitStream},
		{"logging.options.json.infoBufferSize", "log-json-info-buffer-size", l.Options.JSON.InfoBufferSize.Value() != 0},
	} {
		if o.set {
			v.add(o.path, o.flag, "requires the LoggingAlphaOptions feature gate")
		}
	}
}

// validateSource accepts "" (API server) or "file:DIR" with DIR an existing
// directory. The flag always applies, so it is always named.
func validateSource(v *fieldErrors, source string) {
	if source == "" {
		return
	}
	dir, ok := strings.CutPrefix(source, SourceFilePrefix)
	if !ok || dir == "" {
		v.errs = append(v.errs, fmt.Sprintf(`--source: unsupported value %q: must be "" (API server) or "file:DIR"`, source))
		return
	}
	info, err := os.Stat(dir)
	if err != nil {
		v.errs = append(v.errs, fmt.Sprintf("--source: %v", err))
		return
	}
	if !info.IsDir() {
		v.errs = append(v.errs, fmt.Sprintf("--source: %q is not a directory", dir))
	}
}
