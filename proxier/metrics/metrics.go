// Package metrics defines nodeproxy's Prometheus metrics. The names, help strings, labels and
// buckets follow upstream kube-proxy (pkg/proxy/metrics) so dashboards and alerts keep working;
// the userspace-mode metrics are nodeproxy's own, in the same kubeproxy_ namespace.
//
// There is no package-level registry: New creates a fresh set of collectors and Register adds
// them to the registry the caller owns, so tests can use their own prometheus.NewRegistry().
//
// Label values: ip_family is "IPv4" or "IPv6" (string(v1.IPFamily)); traffic_policy is
// "internal" or "external"; code is the HTTP status code ("200", "503").
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Proxy modes that Register knows about.
const (
	// ModeIPTables is the iptables proxy mode.
	ModeIPTables = "iptables"
	// ModeNFTables is the nftables proxy mode.
	ModeNFTables = "nftables"
	// ModeUserspace is nodeproxy's userspace proxy mode.
	ModeUserspace = "userspace"
)

// Namespace is the metric name prefix shared by every kube-proxy metric.
const Namespace = "kubeproxy"

// Label names used by the metrics.
const (
	// LabelIPFamily is the IP family label ("IPv4" or "IPv6").
	LabelIPFamily = "ip_family"
	// LabelCode is the HTTP status code label of the health counters.
	LabelCode = "code"
	// LabelTrafficPolicy is "internal" or "external" on the no-local-endpoints gauge.
	LabelTrafficPolicy = "traffic_policy"
	// LabelTable is the iptables table label.
	LabelTable = "table"
	// LabelService is the userspace metrics' service label ("namespace/name:port").
	LabelService = "service"
	// LabelDirection is "in" (client to endpoint) or "out" (endpoint to client).
	LabelDirection = "direction"
	// LabelReason says why the userspace proxy refused a connection.
	LabelReason = "reason"
)

// alpha prefixes a help string the way component-base does for ALPHA metrics, so the
// exposition text matches upstream kube-proxy.
func alpha(help string) string { return "[ALPHA] " + help }

// syncBuckets are the sync-latency buckets: ExponentialBuckets(0.001, 2, 15).
func syncBuckets() []float64 { return prometheus.ExponentialBuckets(0.001, 2, 15) }

// networkProgrammingBuckets are upstream's buckets: 0.25s, 0.5s, 1..59s, 60..115s by 5s,
// 120..300s by 30s.
func networkProgrammingBuckets() []float64 {
	var b []float64
	b = append(b, prometheus.LinearBuckets(0.25, 0.25, 2)...)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	b = append(b, prometheus.LinearBuckets(120, 30, 7)...)
	return b
}

// Metrics holds every metric nodeproxy exposes. All fields are set by New; which ones are
// registered depends on the mode given to Register, but all are safe to use either way.
type Metrics struct {
	mode string

	// SyncProxyRulesLatency is kubeproxy_sync_proxy_rules_duration_seconds{ip_family}: the
	// latency of one round of syncing proxy rules (full and partial syncs).
	SyncProxyRulesLatency *prometheus.HistogramVec
	// SyncFullProxyRulesLatency is kubeproxy_sync_full_proxy_rules_duration_seconds{ip_family}:
	// the latency of full syncs.
	SyncFullProxyRulesLatency *prometheus.HistogramVec
	// SyncPartialProxyRulesLatency is
	// kubeproxy_sync_partial_proxy_rules_duration_seconds{ip_family}: the latency of partial syncs.
	SyncPartialProxyRulesLatency *prometheus.HistogramVec
	// SyncProxyRulesLastTimestamp is kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family}:
	// the last time proxy rules were successfully synced.
	SyncProxyRulesLastTimestamp *prometheus.GaugeVec
	// SyncProxyRulesLastQueuedTimestamp is
	// kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family}: the last time a sync
	// was queued. Much larger than the last sync timestamp means something is hung.
	SyncProxyRulesLastQueuedTimestamp *prometheus.GaugeVec
	// EndpointChangesPending is kubeproxy_sync_proxy_rules_endpoint_changes_pending: endpoint
	// changes not yet synced.
	EndpointChangesPending prometheus.Gauge
	// EndpointChangesTotal is kubeproxy_sync_proxy_rules_endpoint_changes_total: endpoint
	// changes seen.
	EndpointChangesTotal prometheus.Counter
	// ServiceChangesPending is kubeproxy_sync_proxy_rules_service_changes_pending: service
	// changes not yet synced.
	ServiceChangesPending prometheus.Gauge
	// ServiceChangesTotal is kubeproxy_sync_proxy_rules_service_changes_total: service changes seen.
	ServiceChangesTotal prometheus.Counter
	// NetworkProgrammingLatency is kubeproxy_network_programming_duration_seconds{ip_family}:
	// from the endpoints' last-change-trigger-time to the sync that programmed the change.
	NetworkProgrammingLatency *prometheus.HistogramVec
	// ProxyHealthzTotal is kubeproxy_proxy_healthz_total{code}: /healthz responses by status.
	ProxyHealthzTotal *prometheus.CounterVec
	// ProxyLivezTotal is kubeproxy_proxy_livez_total{code}: /livez responses by status.
	ProxyLivezTotal *prometheus.CounterVec
	// SyncProxyRulesNoLocalEndpointsTotal is
	// kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy,ip_family}: services
	// with a Local traffic policy and no local endpoints (a gauge despite the name, as upstream).
	SyncProxyRulesNoLocalEndpointsTotal *prometheus.GaugeVec
	// ReconcileConntrackFlowsLatency is
	// kubeproxy_conntrack_reconciler_sync_duration_seconds{ip_family}: conntrack cleanup latency.
	ReconcileConntrackFlowsLatency *prometheus.HistogramVec
	// ReconcileConntrackFlowsDeletedEntriesTotal is
	// kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family}: flows deleted by cleanup.
	ReconcileConntrackFlowsDeletedEntriesTotal *prometheus.CounterVec

	// NFTablesSyncFailuresTotal is kubeproxy_sync_proxy_rules_nftables_sync_failures_total
	// {ip_family} (nftables mode).
	NFTablesSyncFailuresTotal *prometheus.CounterVec
	// NFTablesCleanupFailuresTotal is kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total
	// {ip_family}: stale chain cleanup failures (nftables mode).
	NFTablesCleanupFailuresTotal *prometheus.CounterVec

	// IPTablesRestoreFailuresTotal is kubeproxy_sync_proxy_rules_iptables_restore_failures_total
	// {ip_family} (iptables mode).
	IPTablesRestoreFailuresTotal *prometheus.CounterVec
	// IPTablesPartialRestoreFailuresTotal is
	// kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{ip_family}: partial
	// restores that failed and fell back to a full restore (iptables mode).
	IPTablesPartialRestoreFailuresTotal *prometheus.CounterVec
	// IPTablesRulesTotal is kubeproxy_sync_proxy_rules_iptables_total{table,ip_family}: rules
	// owned by kube-proxy (iptables mode).
	IPTablesRulesTotal *prometheus.GaugeVec
	// IPTablesRulesLastSync is kubeproxy_sync_proxy_rules_iptables_last{table,ip_family}: rules
	// written in the last sync (iptables mode).
	IPTablesRulesLastSync *prometheus.GaugeVec

	// UserspaceSyncFailuresTotal is kubeproxy_sync_proxy_rules_userspace_sync_failures_total
	// {ip_family}: failed userspace syncs (nodeproxy's own, userspace mode).
	UserspaceSyncFailuresTotal *prometheus.CounterVec
	// UserspaceActiveConnections is kubeproxy_userspace_active_connections{service}: open
	// proxied connections (userspace mode).
	UserspaceActiveConnections *prometheus.GaugeVec
	// UserspaceBytesTotal is kubeproxy_userspace_bytes_total{service,direction}: bytes copied,
	// direction "in" (client to endpoint) or "out" (endpoint to client) (userspace mode).
	UserspaceBytesTotal *prometheus.CounterVec
	// UserspaceDialErrorsTotal is kubeproxy_userspace_dial_errors_total{service}: failed dials
	// to endpoints (userspace mode).
	UserspaceDialErrorsTotal *prometheus.CounterVec
	// UserspaceRefusedTotal is kubeproxy_userspace_refused_total{service,reason}: connections
	// refused by the userspace proxy, e.g. reason "no_endpoints" (userspace mode).
	UserspaceRefusedTotal *prometheus.CounterVec

	// BuildInfo is kubernetes_build_info{major,minor,git_version,git_commit,git_tree_state,
	// build_date,go_version,compiler,platform}, constant 1; set by Register.
	BuildInfo *prometheus.GaugeVec
}

// Mode returns the proxy mode given to New.
func (m *Metrics) Mode() string { return m.mode }

// New creates the metrics for the given proxy mode. Nothing is registered yet; see Register.
func New(mode string) *Metrics {
	m := &Metrics{mode: mode}
	m.newCommon()
	m.newModeSpecific()
	m.newUserspace()
	m.BuildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kubernetes_build_info",
		Help: "[BETA] A metric with a constant '1' value labeled by major, minor, git version, git commit, " +
			"git tree state, build date, Go version, and compiler from which Kubernetes was built, " +
			"and platform on which it is running.",
	}, []string{"major", "minor", "git_version", "git_commit", "git_tree_state", "build_date",
		"go_version", "compiler", "platform"})
	return m
}

func histogram(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: name, Help: alpha(help), Buckets: buckets,
	}, labels)
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: alpha(help)}, labels)
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: alpha(help)}, labels)
}

func (m *Metrics) newCommon() {
	m.SyncProxyRulesLatency = histogram("sync_proxy_rules_duration_seconds",
		"SyncProxyRules latency in seconds", syncBuckets(), LabelIPFamily)
	m.SyncFullProxyRulesLatency = histogram("sync_full_proxy_rules_duration_seconds",
		"SyncProxyRules latency in seconds for full resyncs", syncBuckets(), LabelIPFamily)
	m.SyncPartialProxyRulesLatency = histogram("sync_partial_proxy_rules_duration_seconds",
		"SyncProxyRules latency in seconds for partial resyncs", syncBuckets(), LabelIPFamily)
	m.SyncProxyRulesLastTimestamp = gaugeVec("sync_proxy_rules_last_timestamp_seconds",
		"The last time proxy rules were successfully synced", LabelIPFamily)
	m.SyncProxyRulesLastQueuedTimestamp = gaugeVec("sync_proxy_rules_last_queued_timestamp_seconds",
		"The last time a sync of proxy rules was queued", LabelIPFamily)
	m.EndpointChangesPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace,
		Name: "sync_proxy_rules_endpoint_changes_pending", Help: alpha("Pending proxy rules Endpoint changes")})
	m.EndpointChangesTotal = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace,
		Name: "sync_proxy_rules_endpoint_changes_total", Help: alpha("Cumulative proxy rules Endpoint changes")})
	m.ServiceChangesPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace,
		Name: "sync_proxy_rules_service_changes_pending", Help: alpha("Pending proxy rules Service changes")})
	m.ServiceChangesTotal = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace,
		Name: "sync_proxy_rules_service_changes_total", Help: alpha("Cumulative proxy rules Service changes")})
	m.NetworkProgrammingLatency = histogram("network_programming_duration_seconds",
		"In Cluster Network Programming Latency in seconds", networkProgrammingBuckets(), LabelIPFamily)
	m.ProxyHealthzTotal = counterVec("proxy_healthz_total", "Cumulative proxy healthz HTTP status", LabelCode)
	m.ProxyLivezTotal = counterVec("proxy_livez_total", "Cumulative proxy livez HTTP status", LabelCode)
	m.SyncProxyRulesNoLocalEndpointsTotal = gaugeVec("sync_proxy_rules_no_local_endpoints_total",
		"Number of services with a Local traffic policy and no endpoints", LabelTrafficPolicy, LabelIPFamily)
	m.ReconcileConntrackFlowsLatency = histogram("conntrack_reconciler_sync_duration_seconds",
		"ReconcileConntrackFlowsLatency latency in seconds", syncBuckets(), LabelIPFamily)
	m.ReconcileConntrackFlowsDeletedEntriesTotal = counterVec("conntrack_reconciler_deleted_entries_total",
		"Cumulative conntrack flows deleted by conntrack reconciler", LabelIPFamily)
}

func (m *Metrics) newModeSpecific() {
	m.NFTablesSyncFailuresTotal = counterVec("sync_proxy_rules_nftables_sync_failures_total",
		"Cumulative proxy nftables sync failures", LabelIPFamily)
	m.NFTablesCleanupFailuresTotal = counterVec("sync_proxy_rules_nftables_cleanup_failures_total",
		"Cumulative proxy nftables cleanup failures", LabelIPFamily)
	m.IPTablesRestoreFailuresTotal = counterVec("sync_proxy_rules_iptables_restore_failures_total",
		"Cumulative proxy iptables restore failures", LabelIPFamily)
	m.IPTablesPartialRestoreFailuresTotal = counterVec("sync_proxy_rules_iptables_partial_restore_failures_total",
		"Cumulative proxy iptables partial restore failures", LabelIPFamily)
	m.IPTablesRulesTotal = gaugeVec("sync_proxy_rules_iptables_total",
		"Total number of iptables rules owned by kube-proxy", LabelTable, LabelIPFamily)
	m.IPTablesRulesLastSync = gaugeVec("sync_proxy_rules_iptables_last",
		"Number of iptables rules written by kube-proxy in last sync", LabelTable, LabelIPFamily)
}

func (m *Metrics) newUserspace() {
	m.UserspaceSyncFailuresTotal = counterVec("sync_proxy_rules_userspace_sync_failures_total",
		"Cumulative proxy userspace sync failures", LabelIPFamily)
	m.UserspaceActiveConnections = gaugeVec("userspace_active_connections",
		"Number of connections currently proxied by the userspace proxy", LabelService)
	m.UserspaceBytesTotal = counterVec("userspace_bytes_total",
		"Cumulative bytes copied by the userspace proxy", LabelService, LabelDirection)
	m.UserspaceDialErrorsTotal = counterVec("userspace_dial_errors_total",
		"Cumulative failed dials to endpoints by the userspace proxy", LabelService)
	m.UserspaceRefusedTotal = counterVec("userspace_refused_total",
		"Cumulative connections refused by the userspace proxy", LabelService, LabelReason)
}
