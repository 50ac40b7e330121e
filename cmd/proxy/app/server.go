package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/clock"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/conntrack"
	"github.com/nodeproxy/nodeproxy/proxier/healthcheck"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
	"github.com/nodeproxy/nodeproxy/proxier/sources"
)

// Run runs the proxy until ctx is done: it resolves the node, starts the health and metrics
// servers, builds the mode's backend under one proxier.Core, and feeds it from the API server
// or a directory of YAML files.
func Run(ctx context.Context, cfg *Config) error {
	if cfg.Cleanup {
		return cleanupAll()
	}
	applyConntrackSysctls(cfg)
	if cfg.InitOnly {
		return nil
	}
	applyOOMScoreAdj(cfg.OOMScoreAdj)

	var client kubernetes.Interface
	if cfg.SourceDir == "" {
		c, err := newClient(cfg)
		if err != nil {
			return err
		}
		client = c
	}
	env, err := newModeEnv(ctx, cfg, client)
	if err != nil {
		return err
	}
	factory, ok := modes[cfg.Mode]
	if !ok {
		return fmt.Errorf("proxy mode %q is not available in this build", cfg.Mode)
	}
	backend, stop, err := factory(ctx, env)
	if err != nil {
		return fmt.Errorf("starting the %s backend: %w", cfg.Mode, err)
	}
	defer stop()
	return serve(ctx, cfg, env, client, lowerGCAtFirstSync(afterCleanup(backend, cfg.Mode), os.LookupEnv))
}

// afterCleanup starts removing the other modes' rules (cleanupOtherModes) in the background
// and returns backend behind a gate that holds its first sync until that is done: the
// cleanup's iptables-save runs overlap the Service and EndpointSlice lists instead of
// delaying them, and no commit of the cleanup lands after the backend's first one (the
// nftables drift monitor would take a foreign commit between its first sync and its start
// for drift and rebuild the tables).
func afterCleanup(backend proxier.Backend, mode v1alpha1.ProxyMode) proxier.Backend {
	done := make(chan struct{})
	go func() {
		defer close(done)
		cleanupOtherModes(mode)
	}()
	return &cleanupGate{Backend: backend, cleaned: done}
}

// cleanupGate is a Backend whose syncs wait until cleaned is closed.
type cleanupGate struct {
	proxier.Backend
	cleaned <-chan struct{}
}

// Sync implements proxier.Backend.
func (g *cleanupGate) Sync(ctx context.Context, req *proxier.SyncRequest) error {
	select {
	case <-g.cleaned:
	case <-ctx.Done():
		return fmt.Errorf("waiting for the other modes' rules to be removed: %w", context.Cause(ctx))
	}
	return g.Backend.Sync(ctx, req)
}

// serve wires the Core, its observers, the servers and the event source, and blocks.
func serve(ctx context.Context, cfg *Config, env *modeEnv, client kubernetes.Interface, backend proxier.Backend) error {
	health := healthcheck.NewProxyHealth(clock.RealClock{}, 2*cfg.SyncPeriod, env.Families, env.Metrics)
	svcHealth := healthcheck.NewServiceHealthServer(serviceHealthIPs(env), health.Healthy, func(nn types.NamespacedName, err error) {
		klog.ErrorS(err, "Failed to start service health check", "service", nn)
	})
	defer svcHealth.Close()
	core, err := proxier.NewCore(proxier.CoreConfig{
		NodeName:      cfg.NodeName,
		Families:      env.Families,
		MinSyncPeriod: cfg.MinSyncPeriod,
		SyncPeriod:    cfg.SyncPeriod,
		Health:        health,
		Observers: []proxier.SyncObserver{
			proxier.NewMetricsObserver(env.Metrics),
			proxier.NewServiceHealthObserver(svcHealth),
			proxier.NewConntrackObserver(conntrack.NewCleaner(nil), env.Metrics),
		},
	}, backend)
	if err != nil {
		return err
	}
	env.core = core
	errs := make(chan error, 4)
	if cfg.HealthzBindAddress != "" {
		go serveHTTP(ctx, "healthz", cfg.HealthzBindAddress, health.Handler(), cfg.BindAddressHardFail, errs)
	}
	if cfg.MetricsBindAddress != "" {
		mux := metrics.MetricsMux(env.Registry, string(cfg.Mode), cfg.EnableProfiling)
		go serveHTTP(ctx, "metrics", cfg.MetricsBindAddress, mux, cfg.BindAddressHardFail, errs)
	}
	go func() {
		var err error
		if client != nil {
			err = sources.RunAPI(ctx, client, cfg.NodeName, cfg.ConfigSyncPeriod, core)
		} else {
			err = sources.RunFiles(ctx, cfg.SourceDir, core)
		}
		if err != nil {
			errs <- fmt.Errorf("watching Services and EndpointSlices: %w", err)
		}
	}()
	klog.InfoS("Starting nodeproxy", "mode", cfg.Mode, "node", cfg.NodeName, "families", env.Families, "nodeIPs", env.NodeIPs)
	loopDone := make(chan struct{})
	go func() { core.SyncLoop(ctx); close(loopDone) }()
	select {
	case <-ctx.Done():
		<-loopDone
		return nil
	case err := <-errs:
		return err
	}
}

// cleanupOtherModes removes what the other modes (and upstream kube-proxy's other modes) may
// have left on the node, as upstream does when it starts (here while the lists load: see
// afterCleanup). Failures are logged: they must not keep the chosen mode from running. A
// variable so that hermetic tests can replace it.
var cleanupOtherModes = func(mode v1alpha1.ProxyMode) {
	for m, clean := range cleanups {
		if m == mode {
			continue
		}
		if err := clean(); err != nil {
			klog.InfoS("Could not remove another mode's rules", "mode", m, "err", err)
		}
	}
}

// serveHTTP serves handler on addr until ctx is done. A listen failure is fatal (sent to errs)
// with hardFail, otherwise retried every 5 seconds, as upstream.
func serveHTTP(ctx context.Context, name, addr string, handler http.Handler, hardFail bool, errs chan<- error) {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	for ctx.Err() == nil {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
		if err == nil {
			klog.InfoS("Serving", "server", name, "address", ln.Addr().String())
			err = srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				return
			}
		}
		if hardFail {
			errs <- fmt.Errorf("serving %s on %s: %w", name, addr, err)
			return
		}
		klog.ErrorS(err, "Server failed, retrying in 5s", "server", name, "address", addr)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// serviceHealthIPs are the addresses health-check node ports listen on: the node-port
// addresses when they are specific, else every address.
func serviceHealthIPs(env *modeEnv) []netip.Addr {
	var ips []netip.Addr
	for _, f := range env.Families {
		pfxs := env.NodePortAddresses[f]
		if len(pfxs) == 0 {
			return nil
		}
		for _, p := range pfxs {
			if !p.IsSingleIP() {
				return nil
			}
			ips = append(ips, p.Addr())
		}
	}
	return ips
}

// newRegistry returns a registry with the mode's metrics registered.
func newRegistry(mode string) (*prometheus.Registry, *metrics.Metrics, error) {
	reg := prometheus.NewRegistry()
	m := metrics.New(mode)
	if err := m.Register(reg); err != nil {
		return nil, nil, fmt.Errorf("setting up %s metrics: %w", mode, err)
	}
	return reg, m, nil
}

// applyConntrackSysctls sets the conntrack sysctls as upstream does at startup (root only).
func applyConntrackSysctls(cfg *Config) {
	if os.Geteuid() != 0 {
		klog.InfoS("Not root: leaving conntrack sysctls as they are")
		return
	}
	c := cfg.Conntrack
	sc := conntrack.SysctlConfig{MaxPerCore: c.MaxPerCore, Min: c.Min, TCPEstablishedTimeout: c.TCPEstablishedTimeout,
		TCPCloseWaitTimeout: c.TCPCloseWaitTimeout, TCPBeLiberal: c.TCPBeLiberal, UDPTimeout: c.UDPTimeout, UDPStreamTimeout: c.UDPStreamTimeout}
	if err := conntrack.ApplySysctls("/", sc, conntrack.HostNumCPU()); err != nil {
		klog.ErrorS(err, "Failed to apply conntrack sysctls")
	}
}

// applyOOMScoreAdj writes the process's oom_score_adj, as upstream does.
func applyOOMScoreAdj(v int32) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(int(v))), 0o644); err != nil {
		klog.V(2).InfoS("Could not set oom_score_adj", "value", v, "err", err)
	}
}
