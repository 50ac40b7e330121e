package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// observeAll records one observation on every labelled metric common to all modes.
func observeAll(m *Metrics) {
	m.SyncProxyRulesLatency.WithLabelValues("IPv4").Observe(0.01)
	m.SyncFullProxyRulesLatency.WithLabelValues("IPv4").Observe(0.01)
	m.SyncPartialProxyRulesLatency.WithLabelValues("IPv4").Observe(0.01)
	m.SyncProxyRulesLastTimestamp.WithLabelValues("IPv4").SetToCurrentTime()
	m.SyncProxyRulesLastQueuedTimestamp.WithLabelValues("IPv4").SetToCurrentTime()
	m.EndpointChangesPending.Set(1)
	m.EndpointChangesTotal.Inc()
	m.ServiceChangesPending.Set(1)
	m.ServiceChangesTotal.Inc()
	m.NetworkProgrammingLatency.WithLabelValues("IPv4").Observe(1.5)
	m.ProxyHealthzTotal.WithLabelValues("200").Inc()
	m.ProxyLivezTotal.WithLabelValues("503").Inc()
	m.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("internal", "IPv4").Set(2)
	m.ReconcileConntrackFlowsLatency.WithLabelValues("IPv4").Observe(0.002)
	m.ReconcileConntrackFlowsDeletedEntriesTotal.WithLabelValues("IPv4").Add(3)
}

// commonLabels maps every common metric name to its label names.
var commonLabels = map[string][]string{
	"kubeproxy_sync_proxy_rules_duration_seconds":              {"ip_family"},
	"kubeproxy_sync_full_proxy_rules_duration_seconds":         {"ip_family"},
	"kubeproxy_sync_partial_proxy_rules_duration_seconds":      {"ip_family"},
	"kubeproxy_sync_proxy_rules_last_timestamp_seconds":        {"ip_family"},
	"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": {"ip_family"},
	"kubeproxy_sync_proxy_rules_endpoint_changes_pending":      nil,
	"kubeproxy_sync_proxy_rules_endpoint_changes_total":        nil,
	"kubeproxy_sync_proxy_rules_service_changes_pending":       nil,
	"kubeproxy_sync_proxy_rules_service_changes_total":         nil,
	"kubeproxy_network_programming_duration_seconds":           {"ip_family"},
	"kubeproxy_proxy_healthz_total":                            {"code"},
	"kubeproxy_proxy_livez_total":                              {"code"},
	"kubeproxy_sync_proxy_rules_no_local_endpoints_total":      {"ip_family", "traffic_policy"},
	"kubeproxy_conntrack_reconciler_sync_duration_seconds":     {"ip_family"},
	"kubeproxy_conntrack_reconciler_deleted_entries_total":     {"ip_family"},
}

func gather(t *testing.T, mode string) (*Metrics, map[string]*dto.MetricFamily) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := New(mode)
	if err := m.Register(reg); err != nil {
		t.Fatalf("Register(%s): %v", mode, err)
	}
	observeAll(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	return m, byName
}

func labelNames(mf *dto.MetricFamily) []string {
	var names []string
	for _, lp := range mf.GetMetric()[0].GetLabel() {
		names = append(names, lp.GetName())
	}
	slices.Sort(names)
	return names
}

func TestRegisterExposesCommonMetricsWithLabels(t *testing.T) {
	for _, mode := range []string{ModeIPTables, ModeNFTables, ModeUserspace} {
		t.Run(mode, func(t *testing.T) {
			_, byName := gather(t, mode)
			for name, want := range commonLabels {
				mf, ok := byName[name]
				if !ok {
					t.Errorf("%s not exposed", name)
					continue
				}
				if got := labelNames(mf); !slices.Equal(got, want) {
					t.Errorf("%s labels = %v, want %v", name, got, want)
				}
				if !strings.HasPrefix(mf.GetHelp(), "[ALPHA] ") {
					t.Errorf("%s help %q lacks the [ALPHA] prefix", name, mf.GetHelp())
				}
			}
			for _, name := range []string{"kubernetes_build_info", "go_goroutines", "process_start_time_seconds"} {
				if _, ok := byName[name]; !ok {
					t.Errorf("%s not exposed", name)
				}
			}
		})
	}
}

func TestModeSpecificMetrics(t *testing.T) {
	own := map[string][]string{
		ModeNFTables: {"kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
			"kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total"},
		ModeIPTables: {"kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
			"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
			"kubeproxy_sync_proxy_rules_iptables_total", "kubeproxy_sync_proxy_rules_iptables_last"},
		ModeUserspace: {"kubeproxy_sync_proxy_rules_userspace_sync_failures_total",
			"kubeproxy_userspace_active_connections", "kubeproxy_userspace_bytes_total",
			"kubeproxy_userspace_dial_errors_total", "kubeproxy_userspace_refused_total"},
	}
	for mode := range own {
		t.Run(mode, func(t *testing.T) {
			m, _ := gather(t, mode)
			m.NFTablesSyncFailuresTotal.WithLabelValues("IPv4").Inc()
			m.NFTablesCleanupFailuresTotal.WithLabelValues("IPv4").Inc()
			m.IPTablesRestoreFailuresTotal.WithLabelValues("IPv4").Inc()
			m.IPTablesPartialRestoreFailuresTotal.WithLabelValues("IPv4").Inc()
			m.IPTablesRulesTotal.WithLabelValues("nat", "IPv4").Set(10)
			m.IPTablesRulesLastSync.WithLabelValues("nat", "IPv4").Set(5)
			m.UserspaceSyncFailuresTotal.WithLabelValues("IPv4").Inc()
			m.UserspaceActiveConnections.WithLabelValues("ns/svc:http").Inc()
			m.UserspaceBytesTotal.WithLabelValues("ns/svc:http", "in").Add(10)
			m.UserspaceDialErrorsTotal.WithLabelValues("ns/svc:http").Inc()
			m.UserspaceRefusedTotal.WithLabelValues("ns/svc:http", "no_endpoints").Inc()
			reg := prometheus.NewRegistry()
			if err := m.Register(reg); err != nil {
				t.Fatalf("Register: %v", err)
			}
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatalf("Gather: %v", err)
			}
			exposed := map[string]bool{}
			for _, mf := range mfs {
				exposed[mf.GetName()] = true
			}
			for other, names := range own {
				for _, name := range names {
					if exposed[name] != (other == mode) {
						t.Errorf("mode %s: %s exposed=%t, want %t", mode, name, exposed[name], other == mode)
					}
				}
			}
		})
	}
}

func TestRegisterRejectsUnknownModeAndDuplicates(t *testing.T) {
	if err := New("ipvs").Register(prometheus.NewRegistry()); err == nil {
		t.Error("Register with mode ipvs succeeded, want an error")
	}
	reg := prometheus.NewRegistry()
	if err := New(ModeNFTables).Register(reg); err != nil {
		t.Fatalf("first Register: %v", err)
	}
	if err := New(ModeNFTables).Register(reg); err == nil {
		t.Error("registering a second Metrics into the same registry succeeded, want an error")
	}
}

func TestNetworkProgrammingBuckets(t *testing.T) {
	b := networkProgrammingBuckets()
	if len(b) != 2+59+12+7 {
		t.Fatalf("got %d buckets, want 80", len(b))
	}
	for i, want := range map[int]float64{0: 0.25, 1: 0.5, 2: 1, 60: 59, 61: 60, 72: 115, 73: 120, 79: 300} {
		if b[i] != want {
			t.Errorf("bucket[%d] = %v, want %v", i, b[i], want)
		}
	}
}

func get(t *testing.T, h http.Handler, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	res := rec.Result()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return res, string(body)
}

func TestMetricsMux(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(ModeNFTables)
	if err := m.Register(reg); err != nil {
		t.Fatalf("Register: %v", err)
	}
	m.ProxyHealthzTotal.WithLabelValues("200").Inc()
	mux := MetricsMux(reg, ModeNFTables, false)

	res, body := get(t, mux, "/proxyMode")
	if res.StatusCode != http.StatusOK || body != "nftables" {
		t.Errorf("/proxyMode = %d %q, want 200 \"nftables\"", res.StatusCode, body)
	}
	if ct := res.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("/proxyMode Content-Type = %q", ct)
	}
	if res, body = get(t, mux, "/healthz"); res.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("/healthz = %d %q, want 200 \"ok\"", res.StatusCode, body)
	}
	res, body = get(t, mux, "/metrics")
	if res.StatusCode != http.StatusOK || !strings.Contains(body, `kubeproxy_proxy_healthz_total{code="200"} 1`) {
		t.Errorf("/metrics = %d, body lacks the healthz counter:\n%s", res.StatusCode, body)
	}
	if !strings.Contains(body, "# HELP kubeproxy_proxy_healthz_total [ALPHA] Cumulative proxy healthz HTTP status") {
		t.Errorf("/metrics lacks upstream's help line for kubeproxy_proxy_healthz_total")
	}
	if res, _ = get(t, mux, "/debug/pprof/"); res.StatusCode != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without profiling = %d, want 404", res.StatusCode)
	}
	if res, _ = get(t, MetricsMux(reg, ModeNFTables, true), "/debug/pprof/"); res.StatusCode != http.StatusOK {
		t.Errorf("/debug/pprof/ with profiling = %d, want 200", res.StatusCode)
	}
}

func TestBuildInfoIsOne(t *testing.T) {
	m := New(ModeIPTables)
	if err := m.Register(prometheus.NewRegistry()); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if n := testutil.CollectAndCount(m.BuildInfo); n != 1 {
		t.Fatalf("kubernetes_build_info has %d series, want 1", n)
	}
}
