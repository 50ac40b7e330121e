package userspace

import (
	"fmt"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// Defaults for the zero values of Config.
const (
	// DefaultMaxConnections bounds the concurrently proxied TCP connections (each holds two
	// sockets, two goroutines and, while copying, up to two splice pipes).
	DefaultMaxConnections = 10000
	// DefaultMaxUDPSessions bounds the concurrent UDP sessions (one socket and one goroutine each).
	DefaultMaxUDPSessions = 10000
	// DefaultDialTimeout is how long one dial to an endpoint may take, as upstream's
	// localnodeportproxy.
	DefaultDialTimeout = 5 * time.Second
	// DefaultUDPIdleTimeout ends a UDP session without traffic in either direction; it matches
	// the kernel's conntrack UDP timeout, so UDP behaves as in the kernel modes.
	DefaultUDPIdleTimeout = 30 * time.Second
	// DefaultDrainTimeout is how long connections to a terminating or removed endpoint, or of a
	// removed service port, may stay open (the default pod termination grace period).
	DefaultDrainTimeout = 30 * time.Second
)

// Config configures a Proxier. The zero value of every limit and timeout means its default.
type Config struct {
	// Families are the IP families to proxy (one or both).
	Families []v1.IPFamily
	// NodeIPs are the node's primary addresses. This mode does not need them to capture
	// traffic (NodePorts match local addresses through the routing table); they are logged.
	NodeIPs []netip.Addr
	// NodePortAddresses restricts NodePorts to local addresses in these prefixes, per family;
	// a nil map or a family without prefixes means every local address.
	NodePortAddresses map[v1.IPFamily][]netip.Prefix
	// ListenAddress is where listeners bind for its family. The zero value (recommended) binds
	// the unspecified address of each family: redirect delivers traffic from pods and outside
	// to the address of the interface it arrived on and traffic from the node to loopback, so
	// only a wildcard listener receives all of it (the capture table's input-guard chain drops
	// whatever reaches a listener port without being redirected). A loopback address serves
	// only traffic the node itself sends.
	ListenAddress netip.Addr
	// MaxConnections bounds the concurrent TCP connections, across all service ports; the
	// excess is reset and counted as refused with reason "connection_limit".
	MaxConnections int
	// MaxUDPSessions bounds the concurrent UDP sessions, across all service ports; datagrams
	// of new flows beyond it are dropped and counted as refused with reason "session_limit".
	MaxUDPSessions int
	// DialTimeout bounds one dial to one endpoint.
	DialTimeout time.Duration
	// UDPIdleTimeout ends a UDP session without traffic.
	UDPIdleTimeout time.Duration
	// DrainTimeout is the grace period of open TCP connections to an endpoint that is
	// terminating or gone, and of a removed service port.
	DrainTimeout time.Duration
	// NetNSFd is a network namespace file descriptor: when not 0, listeners, dials and the
	// capture tables live in that namespace instead of the current one.
	NetNSFd int
	// Metrics receives the Userspace* metrics (optional: nil keeps them private).
	Metrics *metrics.Metrics
}

// withDefaults returns a validated copy of cfg with every zero limit and timeout set.
func (cfg Config) withDefaults() (Config, error) {
	if len(cfg.Families) == 0 || len(cfg.Families) > 2 {
		return cfg, fmt.Errorf("configuring the userspace proxy: want one or two IP families, got %v", cfg.Families)
	}
	seen := map[v1.IPFamily]bool{}
	for _, f := range cfg.Families {
		if (f != v1.IPv4Protocol && f != v1.IPv6Protocol) || seen[f] {
			return cfg, fmt.Errorf("configuring the userspace proxy: bad or repeated IP family %q", f)
		}
		seen[f] = true
	}
	if cfg.ListenAddress.IsValid() && !seen[proxier.FamilyOf(cfg.ListenAddress)] {
		return cfg, fmt.Errorf("configuring the userspace proxy: listen address %s is not of a proxied family", cfg.ListenAddress)
	}
	for name, v := range map[string]int64{
		"MaxConnections": int64(cfg.MaxConnections), "MaxUDPSessions": int64(cfg.MaxUDPSessions),
		"DialTimeout": int64(cfg.DialTimeout), "UDPIdleTimeout": int64(cfg.UDPIdleTimeout),
		"DrainTimeout": int64(cfg.DrainTimeout), "NetNSFd": int64(cfg.NetNSFd),
	} {
		if v < 0 {
			return cfg, fmt.Errorf("configuring the userspace proxy: %s must not be negative", name)
		}
	}
	setDefault(&cfg.MaxConnections, DefaultMaxConnections)
	setDefault(&cfg.MaxUDPSessions, DefaultMaxUDPSessions)
	setDefault(&cfg.DialTimeout, DefaultDialTimeout)
	setDefault(&cfg.UDPIdleTimeout, DefaultUDPIdleTimeout)
	setDefault(&cfg.DrainTimeout, DefaultDrainTimeout)
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(metrics.ModeUserspace)
	}
	return cfg, nil
}

// listenAddr returns the address listeners of family bind.
func (cfg *Config) listenAddr(family v1.IPFamily) netip.Addr {
	if cfg.ListenAddress.IsValid() && proxier.FamilyOf(cfg.ListenAddress) == family {
		return cfg.ListenAddress
	}
	if family == v1.IPv6Protocol {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// setDefault sets *v to def when it is zero.
func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
