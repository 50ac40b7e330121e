package app

import (
	"context"

	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/userspace"
)

func init() {
	modes[ModeUserspace] = newUserspaceBackend
	cleanups[ModeUserspace] = func() error { return userspace.Cleanup(0) }
}

// newUserspaceBackend builds the userspace forwarder for this node.
func newUserspaceBackend(_ context.Context, env *modeEnv) (proxier.Backend, func(), error) {
	u := env.Config.Userspace
	p, err := userspace.New(userspace.Config{
		Families:          env.Families,
		NodeIPs:           env.NodeIPs,
		NodePortAddresses: env.NodePortAddresses,
		MaxConnections:    u.MaxConnections,
		MaxUDPSessions:    u.MaxUDPSessions,
		DialTimeout:       u.DialTimeout,
		UDPIdleTimeout:    u.UDPIdleTimeout,
		DrainTimeout:      u.DrainTimeout,
		Metrics:           env.Metrics,
	})
	if err != nil {
		return nil, nil, err
	}
	stop := func() {
		if err := p.Close(); err != nil {
			klog.ErrorS(err, "Failed to close the userspace proxy")
		}
	}
	return p, stop, nil
}
