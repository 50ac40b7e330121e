package app

import (
	"context"

	"github.com/nodeproxy/nodeproxy/nftables"
	"github.com/nodeproxy/nodeproxy/proxier"
)

func init() {
	modes[ModeNFTables] = newNFTablesBackend
	cleanups[ModeNFTables] = func() error { return nftables.Cleanup(0) }
}

// newNFTablesBackend builds the netlink nftables backend for this node.
func newNFTablesBackend(_ context.Context, env *modeEnv) (proxier.Backend, func(), error) {
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
	return p, func() {}, nil
}
