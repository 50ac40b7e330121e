package app

import (
	"time"

	"github.com/spf13/pflag"
)

// UserspaceConfig holds the userspace mode's limits (nodeproxy only; not part of the
// KubeProxyConfiguration file, so these flags apply with --config too).
type UserspaceConfig struct {
	// MaxConnections caps concurrent proxied TCP connections; excess ones are refused.
	MaxConnections int
	// MaxUDPSessions caps concurrent UDP client sessions; excess flows are dropped.
	MaxUDPSessions int
	// DialTimeout bounds each connection attempt to an endpoint.
	DialTimeout time.Duration
	// UDPIdleTimeout ends a UDP session after this long without traffic.
	UDPIdleTimeout time.Duration
	// DrainTimeout is how long connections to a terminating or removed endpoint may live on.
	DrainTimeout time.Duration
}

// defaultUserspaceConfig mirrors the userspace package's defaults.
func defaultUserspaceConfig() UserspaceConfig {
	return UserspaceConfig{MaxConnections: 10000, MaxUDPSessions: 10000, DialTimeout: 5 * time.Second,
		UDPIdleTimeout: 30 * time.Second, DrainTimeout: 30 * time.Second}
}

// addUserspaceFlags registers the userspace mode's limit flags on fs.
func (o *Options) addUserspaceFlags(fs *pflag.FlagSet) {
	u := &o.Userspace
	fs.IntVar(&u.MaxConnections, "userspace-max-connections", u.MaxConnections, "nodeproxy only, userspace mode: the most concurrent TCP connections proxied; excess connections are refused and counted.")
	fs.IntVar(&u.MaxUDPSessions, "userspace-max-udp-sessions", u.MaxUDPSessions, "nodeproxy only, userspace mode: the most concurrent UDP client sessions; packets of excess new flows are dropped and counted.")
	fs.DurationVar(&u.DialTimeout, "userspace-dial-timeout", u.DialTimeout, "nodeproxy only, userspace mode: how long one connection attempt to an endpoint may take before the next endpoint is tried.")
	fs.DurationVar(&u.UDPIdleTimeout, "userspace-udp-idle-timeout", u.UDPIdleTimeout, "nodeproxy only, userspace mode: a UDP session without traffic for this long is closed.")
	fs.DurationVar(&u.DrainTimeout, "userspace-drain-timeout", u.DrainTimeout, "nodeproxy only, userspace mode: how long open connections to a terminating or removed endpoint are kept.")
}

// validateUserspace checks the userspace limits.
func validateUserspace(v *fieldErrors, u UserspaceConfig) {
	if u.MaxConnections <= 0 {
		v.add("userspace-max-connections", "", "must be greater than 0, got %d", u.MaxConnections)
	}
	if u.MaxUDPSessions <= 0 {
		v.add("userspace-max-udp-sessions", "", "must be greater than 0, got %d", u.MaxUDPSessions)
	}
	for name, d := range map[string]time.Duration{"userspace-dial-timeout": u.DialTimeout, "userspace-udp-idle-timeout": u.UDPIdleTimeout, "userspace-drain-timeout": u.DrainTimeout} {
		if d <= 0 {
			v.add(name, "", "must be greater than 0, got %s", d)
		}
	}
}
