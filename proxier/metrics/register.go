package metrics

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/component-base/version"
)

// commonCollectors are registered in every mode.
func (m *Metrics) commonCollectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.SyncProxyRulesLatency,
		m.SyncFullProxyRulesLatency,
		m.SyncPartialProxyRulesLatency,
		m.SyncProxyRulesLastTimestamp,
		m.SyncProxyRulesLastQueuedTimestamp,
		m.EndpointChangesPending,
		m.EndpointChangesTotal,
		m.ServiceChangesPending,
		m.ServiceChangesTotal,
		m.NetworkProgrammingLatency,
		m.ProxyHealthzTotal,
		m.ProxyLivezTotal,
		m.SyncProxyRulesNoLocalEndpointsTotal,
		m.ReconcileConntrackFlowsLatency,
		m.ReconcileConntrackFlowsDeletedEntriesTotal,
		m.BuildInfo,
	}
}

// modeCollectors returns the collectors only the given mode registers.
func (m *Metrics) modeCollectors() ([]prometheus.Collector, error) {
	switch m.mode {
	case ModeNFTables:
		return []prometheus.Collector{m.NFTablesSyncFailuresTotal, m.NFTablesCleanupFailuresTotal}, nil
	case ModeIPTables:
		return []prometheus.Collector{
			m.IPTablesRestoreFailuresTotal,
			m.IPTablesPartialRestoreFailuresTotal,
			m.IPTablesRulesTotal,
			m.IPTablesRulesLastSync,
		}, nil
	case ModeUserspace:
		return []prometheus.Collector{
			m.UserspaceSyncFailuresTotal,
			m.UserspaceActiveConnections,
			m.UserspaceBytesTotal,
			m.UserspaceDialErrorsTotal,
			m.UserspaceRefusedTotal,
		}, nil
	default:
		return nil, fmt.Errorf("registering metrics: unknown proxy mode %q (want %q, %q or %q)",
			m.mode, ModeIPTables, ModeNFTables, ModeUserspace)
	}
}

// Register adds the common metrics, the metrics of the mode given to New, the Go runtime and
// process collectors and kubernetes_build_info to reg. Every collector is attempted; the
// failures are returned joined. A Go or process collector that reg already holds is not an
// error (prometheus.DefaultRegisterer comes with both).
func (m *Metrics) Register(reg prometheus.Registerer) error {
	own, err := m.modeCollectors()
	if err != nil {
		return err
	}
	info := version.Get()
	m.BuildInfo.WithLabelValues(info.Major, info.Minor, info.GitVersion, info.GitCommit, info.GitTreeState,
		info.BuildDate, info.GoVersion, info.Compiler, info.Platform).Set(1)

	var errs []error
	for _, c := range append(m.commonCollectors(), own...) {
		if err := reg.Register(c); err != nil {
			errs = append(errs, fmt.Errorf("registering %s metrics: %w", m.mode, err))
		}
	}
	runtime := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	for _, c := range runtime {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				continue
			}
			errs = append(errs, fmt.Errorf("registering runtime metrics: %w", err))
		}
	}
	return errors.Join(errs...)
}
