package app

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

// DefaultModeWarning is logged (and should be reported as a Node event by the
// server) when no proxy mode was configured and iptables was chosen.
const DefaultModeWarning = "No kube-proxy mode specified: defaulting to 'iptables'. Note that in Kubernetes 1.40 the default mode will switch to 'nftables'. If you wish to continue using 'iptables' mode, you must explicitly specify 'mode: iptables' in the kube-proxy config file, or '--proxy-mode iptables' on the kube-proxy command line."

// Complete resolves the effective configuration after fs was parsed, with
// upstream's precedence:
//   - with --config, the file's configuration replaces everything bound to
//     flags, except the logging flags (copied over when set) and
//     --hostname-override; flags not bound to the configuration (--config,
//     --write-config-to, --cleanup, --init-only, --master, --source,
//     --version) always apply;
//   - without --config, --iptables-sync-period/--iptables-min-sync-period and
//     --masquerade-all feed the active mode's block, --cluster-cidr sets
//     clusterCIDR, and the deprecated --healthz-port/--metrics-port rewrite
//     the servers' ports (0 disables the server).
//
// It then applies the platform defaults (mode, nodePortAddresses,
// detectLocalMode), the hostname override and the feature gates.
func (o *Options) Complete(fs *pflag.FlagSet) error {
	if o.ConfigFile == "" && o.WriteConfigTo == "" {
		o.config.HealthzBindAddress = addressFromDeprecatedPort(o.config.HealthzBindAddress, o.healthzPort)
		o.config.MetricsBindAddress = addressFromDeprecatedPort(o.config.MetricsBindAddress, o.metricsPort)
	}
	if o.ConfigFile != "" {
		fileConfig, err := loadConfigFile(o.ConfigFile)
		if err != nil {
			return err
		}
		if err := copyLoggingFlags(fs, &fileConfig.Logging); err != nil {
			return err
		}
		o.config = fileConfig
	} else {
		o.applyFlagOnlySettings(fs)
	}

	o.modeDefaulted = applyPlatformDefaults(o.config)
	if o.modeDefaulted {
		klog.ErrorS(nil, DefaultModeWarning)
	}
	o.modeSettings = activeModeSettings(o.config)
	normalizeModeBlocks(o.config, o.modeSettings)

	if err := o.applyHostnameOverride(); err != nil {
		return err
	}
	nodeName, err := resolveNodeName(o.config.HostnameOverride)
	if err != nil {
		return err
	}
	o.nodeName = nodeName

	gates, err := resolveFeatureGates(o.config.FeatureGates)
	if err != nil {
		return err
	}
	o.featureGates = gates
	o.completed = true
	return nil
}

// applyFlagOnlySettings maps the flags that have no one-to-one v1alpha1 field
// onto the configuration (upstream's processV1Alpha1Flags). As upstream, the
// --iptables-* periods apply to every mode except ipvs, so nftables mode uses
// them too.
func (o *Options) applyFlagOnlySettings(fs *pflag.FlagSet) {
	settings := activeModeSettings(o.config)
	if o.config.Mode == ModeIPVS {
		if fs.Changed("ipvs-sync-period") {
			settings.syncPeriod = o.ipvsSyncPeriod
		}
		if fs.Changed("ipvs-min-sync-period") {
			settings.minSyncPeriod = o.ipvsMinSyncPeriod
		}
	} else {
		if fs.Changed("iptables-sync-period") {
			settings.syncPeriod = o.iptablesSyncPeriod
		}
		if fs.Changed("iptables-min-sync-period") {
			settings.minSyncPeriod = o.iptablesMinSyncPeriod
		}
	}
	settings.masqueradeAll = o.masqueradeAll
	normalizeModeBlocks(o.config, settings)
	if fs.Changed("cluster-cidr") {
		o.config.ClusterCIDR = o.clusterCIDRs
	}
}

// applyHostnameOverride applies --hostname-override over the configuration:
// trimmed and lowercased; a value that is only whitespace is an error.
func (o *Options) applyHostnameOverride() error {
	if o.hostnameOverride == "" {
		return nil
	}
	name := strings.TrimSpace(o.hostnameOverride)
	if name == "" {
		return errors.New("hostnameOverride (--hostname-override): empty hostname-override is invalid")
	}
	o.config.HostnameOverride = strings.ToLower(name)
	return nil
}

// resolveNodeName returns the node name the proxy uses: the override, else
// the OS host name, trimmed and lowercased (upstream nodeutil.GetHostname).
func resolveNodeName(override string) (string, error) {
	name := override
	if name == "" {
		host, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("determining the node name from the host name: %w", err)
		}
		name = host
	}
	name = strings.TrimSpace(name)
	if name == "" {
		return "", errors.New("hostnameOverride: empty hostname is invalid")
	}
	return strings.ToLower(name), nil
}

// addressFromDeprecatedPort applies a deprecated --healthz-port/--metrics-port
// value: 0 disables the server (empty address), otherwise a bare IP gets the
// port appended.
func addressFromDeprecatedPort(addr string, port int32) string {
	if port == 0 {
		return ""
	}
	return appendPortIfNeeded(addr, port)
}
