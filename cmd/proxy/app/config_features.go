package app

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/klog/v2"
)

// Feature gates that nodeproxy knows (upstream v1.37 names and defaults).
const (
	// FeatureAllowServiceExternalIPs (GA, default on): when off, Service
	// externalIPs are ignored.
	FeatureAllowServiceExternalIPs = "AllowServiceExternalIPs"
	// FeaturePreferSameTrafficDistribution (GA, locked on): honour
	// EndpointSlice forNodes hints.
	FeaturePreferSameTrafficDistribution = "PreferSameTrafficDistribution"
	// FeatureMultiCIDRServiceAllocator (GA, locked on): watch ServiceCIDRs.
	FeatureMultiCIDRServiceAllocator = "MultiCIDRServiceAllocator"
	// FeatureNFTablesNetlink (beta, default on): read nftables state over netlink.
	FeatureNFTablesNetlink = "NFTablesNetlink"
	// FeatureKubeProxyNFTablesLocalhostNodePorts (alpha, default off):
	// userspace localhost NodePorts in nftables mode.
	FeatureKubeProxyNFTablesLocalhostNodePorts = "KubeProxyNFTablesLocalhostNodePorts"
	// FeatureNFTablesProxyMode (GA, locked on): nftables mode exists.
	FeatureNFTablesProxyMode = "NFTablesProxyMode"
	// FeatureKubeProxyIPVS (deprecated, default on upstream): nodeproxy has
	// no IPVS mode whatever its value.
	FeatureKubeProxyIPVS = "KubeProxyIPVS"
	// FeatureLoggingAlphaOptions (alpha, default off): split-stream logging.
	FeatureLoggingAlphaOptions = "LoggingAlphaOptions"
	// FeatureLoggingBetaOptions (beta, default on).
	FeatureLoggingBetaOptions = "LoggingBetaOptions"
	// FeatureContextualLogging (beta, default on).
	FeatureContextualLogging = "ContextualLogging"
	// FeatureComponentFlagz (beta, default on): the /flagz page.
	FeatureComponentFlagz = "ComponentFlagz"
	// FeatureComponentStatusz (beta, default on): the /statusz page.
	FeatureComponentStatusz = "ComponentStatusz"
	// FeatureNativeHistograms (beta, default on): native histogram metrics.
	FeatureNativeHistograms = "NativeHistograms"
)

// featureSpec is the default state of a known gate and whether it is locked
// to that default.
type featureSpec struct {
	enabled bool
	locked  bool
	stage   string
}

// knownFeatures lists every gate nodeproxy resolves. Gates that upstream's
// global list has but nodeproxy does not use are accepted with a warning and
// ignored, so that existing --feature-gates settings keep working.
var knownFeatures = map[string]featureSpec{
	FeatureAllowServiceExternalIPs:             {enabled: true, stage: "GA"},
	FeaturePreferSameTrafficDistribution:       {enabled: true, locked: true, stage: "GA"},
	FeatureMultiCIDRServiceAllocator:           {enabled: true, locked: true, stage: "GA"},
	FeatureNFTablesNetlink:                     {enabled: true, stage: "BETA"},
	FeatureKubeProxyNFTablesLocalhostNodePorts: {enabled: false, stage: "ALPHA"},
	FeatureNFTablesProxyMode:                   {enabled: true, locked: true, stage: "GA"},
	FeatureKubeProxyIPVS:                       {enabled: true, stage: "DEPRECATED"},
	FeatureLoggingAlphaOptions:                 {enabled: false, stage: "ALPHA"},
	FeatureLoggingBetaOptions:                  {enabled: true, stage: "BETA"},
	FeatureContextualLogging:                   {enabled: true, stage: "BETA"},
	FeatureComponentFlagz:                      {enabled: true, stage: "BETA"},
	FeatureComponentStatusz:                    {enabled: true, stage: "BETA"},
	FeatureNativeHistograms:                    {enabled: true, stage: "BETA"},
}

// knownFeaturesHelp lists the known gates for --help, one per line, like
// component-base's KnownFeatures().
func knownFeaturesHelp() string {
	lines := make([]string, 0, len(knownFeatures))
	for name, spec := range knownFeatures {
		if spec.locked {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s=true|false (%s - default=%t)", name, spec.stage, spec.enabled))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// resolveFeatureGates returns the effective state of every known gate given
// the requested settings. Setting a locked gate to a non-default value is an
// error; an unknown gate is logged and ignored.
func resolveFeatureGates(requested map[string]bool) (map[string]bool, error) {
	effective := make(map[string]bool, len(knownFeatures))
	for name, spec := range knownFeatures {
		effective[name] = spec.enabled
	}
	names := make([]string, 0, len(requested))
	for name := range requested {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		want := requested[name]
		spec, ok := knownFeatures[name]
		if !ok {
			klog.InfoS("Ignoring feature gate that nodeproxy does not use", "gate", name, "value", want)
			continue
		}
		if spec.locked && want != spec.enabled {
			return nil, fmt.Errorf("featureGates (--feature-gates): cannot set feature gate %s to %t, feature is locked to %t", name, want, spec.enabled)
		}
		effective[name] = want
	}
	return effective, nil
}
