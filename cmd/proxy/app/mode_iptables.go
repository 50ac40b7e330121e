package app

import (
	"context"

	"github.com/nodeproxy/nodeproxy/iptables"
	"github.com/nodeproxy/nodeproxy/proxier"
)

func init() {
	modes[ModeIPTables] = newIPTablesBackend
	cleanups[ModeIPTables] = func() error { return iptables.Cleanup("") }
}

// newIPTablesBackend builds the iptables backend for this node and starts its canary monitor.
func newIPTablesBackend(ctx context.Context, env *modeEnv) (proxier.Backend, func(), error) {
	cfg := env.Config
	p, err := iptables.New(iptables.Config{
		Families:           env.Families,
		NodeIPs:            env.NodeIPs,
		Detectors:          env.Detectors,
		NodePortAddresses:  env.NodePortAddresses,
		LocalhostNodePorts: cfg.LocalhostNodePorts,
		MasqueradeBit:      int(cfg.MasqueradeBit),
		MasqueradeAll:      cfg.MasqueradeAll,
		SyncPeriod:         cfg.SyncPeriod,
		OnCanaryLost:       env.forceFullSync,
		Metrics:            env.Metrics,
	})
	if err != nil {
		return nil, nil, err
	}
	monitorCtx, stop := context.WithCancel(ctx)
	go p.Run(monitorCtx)
	return p, stop, nil
}
