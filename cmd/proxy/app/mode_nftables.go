package app

import (
	"context"
	"sync"

	"github.com/nodeproxy/nodeproxy/nftables"
	"github.com/nodeproxy/nodeproxy/proxier"
)

func init() {
	modes[ModeNFTables] = newNFTablesBackend
	cleanups[ModeNFTables] = func() error { return nftables.Cleanup(0) }
}

// newNFTablesBackend builds the netlink nftables backend for this node. Its drift monitor,
// which forces a full sync (rebuilding the tables) when another process changes them, starts
// with the first sync and stops with the returned stop function.
func newNFTablesBackend(ctx context.Context, env *modeEnv) (proxier.Backend, func(), error) {
	cfg := env.Config
	p, err := nftables.New(nftables.Config{
		Families:          env.Families,
		NodeIPs:           env.NodeIPs,
		Detectors:         env.Detectors,
		NodePortAddresses: env.NodePortAddresses,
		MasqueradeBit:     int(cfg.MasqueradeBit),
		MasqueradeAll:     cfg.MasqueradeAll,
		Metrics:           env.Metrics,
	})
	if err != nil {
		return nil, nil, err
	}
	monitorCtx, stop := context.WithCancel(ctx)
	return &monitoredNFTables{Proxier: p, ctx: monitorCtx, onDrift: env.forceFullSync}, stop, nil
}

// monitoredNFTables is the nftables backend that starts its drift monitor at the first sync:
// the Core exists by then (env.core is set before the sync loop starts), so the monitor's
// callback never races with the Core's creation.
type monitoredNFTables struct {
	*nftables.Proxier
	ctx     context.Context
	onDrift func()
	start   sync.Once
}

// Sync implements proxier.Backend.
func (b *monitoredNFTables) Sync(ctx context.Context, req *proxier.SyncRequest) error {
	b.start.Do(func() { go b.Run(b.ctx, b.onDrift) })
	return b.Proxier.Sync(ctx, req)
}
