package conntrack

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// maxCleanAttempts bounds how often a conntrack dump that the kernel reports
// as interrupted (NLM_F_DUMP_INTR, surfaced as EINTR) is retried.
const maxCleanAttempts = 5

// Target is one service port whose stale UDP or SCTP flows must go.
//
// A flow of Protocol is stale when its original destination is one of
// VIPs:Port, or, when NodePort != 0 and Serving is not empty, any address
// with destination port NodePort, and its reply source is not one of Serving.
// The node-port match is skipped without serving endpoints because it matches
// on the port alone and would otherwise delete unrelated flows.
type Target struct {
	// Protocol is UDP or SCTP; targets of other protocols are ignored.
	Protocol v1.Protocol
	// VIPs are the service frontends: cluster IP, load-balancer IPs and
	// external IPs, of the family being cleaned.
	VIPs []netip.Addr
	// Port is the service port of the frontends.
	Port int32
	// NodePort is the service's node port, 0 if it has none.
	NodePort int32
	// Serving are the endpoints (IP and target port) that serve now.
	Serving []netip.AddrPort
}

// Interface deletes stale conntrack flows. [Cleaner] implements it over
// netlink and [Fake] records calls for unit tests.
type Interface interface {
	// CleanStale deletes the flows of the family that are stale for one of
	// the targets and returns how many were deleted.
	CleanStale(family v1.IPFamily, targets []Target) (int, error)
}

// flowDeleter dumps a conntrack table once and deletes the flows matched by
// the filters. *netlink.Handle and ctnetlinkTable implement it; unit tests
// use an in-memory table.
type flowDeleter interface {
	ConntrackDeleteFilters(table netlink.ConntrackTableType, family netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error)
}

// Cleaner deletes stale flows from the conntrack table of one network
// namespace. It never changes the namespace of the calling thread.
type Cleaner struct {
	table flowDeleter
	// decodesSCTP tells whether table reports SCTP ports; without them SCTP
	// flows cannot be judged and SCTP targets are skipped.
	decodesSCTP bool
	// release frees what the constructor opened; nil if nothing.
	release func()
}

var _ Interface = (*Cleaner)(nil)

// NewCleaner returns a Cleaner.
//
// With a nil h it works on the network namespace of the calling thread, with
// its own netfilter netlink requests (one socket per request, like the
// netlink package's default handle) that decode the ports of UDP and SCTP
// flows: both protocols are cleaned. This is what a proxy running in the
// host namespace uses.
//
// With a non-nil h (for example netlink.NewHandleAt(ns,
// unix.NETLINK_NETFILTER)) it works through h.ConntrackDeleteFilters in h's
// namespace. The netlink package does not decode SCTP ports, so SCTP targets
// are skipped (with a log line); use [NewCleanerAt] to clean SCTP in another
// namespace. The Cleaner does not own h: the caller closes it.
func NewCleaner(h *netlink.Handle) *Cleaner {
	if h == nil {
		return &Cleaner{table: &ctnetlinkTable{}, decodesSCTP: true}
	}
	return &Cleaner{table: h}
}

// NewCleanerAt returns a Cleaner for the network namespace ns that cleans UDP
// and SCTP flows through a netfilter netlink socket opened in ns. Call Close
// when done.
func NewCleanerAt(ns netns.NsHandle) (*Cleaner, error) {
	table, err := newCtnetlinkTableAt(ns)
	if err != nil {
		return nil, err
	}
	return &Cleaner{table: table, decodesSCTP: true, release: table.close}, nil
}

// Close releases the socket opened by NewCleanerAt; for other Cleaners it
// does nothing. The Cleaner must not be used afterwards.
func (c *Cleaner) Close() {
	if c.release != nil {
		c.release()
		c.release = nil
	}
}

// CleanStale dumps the conntrack table of family once and deletes the flows
// that are stale for one of targets (see [Target]). Targets of protocols
// other than UDP and SCTP, and frontends of the other family, are ignored.
// It returns the number of deleted flows, which may be positive even when an
// error is returned. An interrupted dump is retried a few times.
func (c *Cleaner) CleanStale(family v1.IPFamily, targets []Target) (int, error) {
	inetFamily, err := inetFamilyOf(family)
	if err != nil {
		return 0, err
	}
	filter := newStaleFlowFilter(family, targets, c.decodesSCTP)
	if filter.empty() {
		return 0, nil
	}
	deleted := 0
	for attempt := 1; ; attempt++ {
		n, err := c.table.ConntrackDeleteFilters(netlink.ConntrackTable, inetFamily, filter)
		deleted += int(n)
		if err == nil {
			klog.V(4).InfoS("Cleaned stale conntrack flows", "ipFamily", family, "targets", len(targets), "deleted", deleted)
			return deleted, nil
		}
		if !errors.Is(err, unix.EINTR) || attempt >= maxCleanAttempts {
			return deleted, fmt.Errorf("deleting stale %s conntrack flows (attempt %d of %d): %w", family, attempt, maxCleanAttempts, err)
		}
		klog.V(2).InfoS("Conntrack dump interrupted, retrying", "ipFamily", family, "attempt", attempt, "err", err)
	}
}

// inetFamilyOf maps a Kubernetes IP family to the netlink address family.
func inetFamilyOf(family v1.IPFamily) (netlink.InetFamily, error) {
	switch family {
	case v1.IPv4Protocol:
		return netlink.InetFamily(unix.AF_INET), nil
	case v1.IPv6Protocol:
		return netlink.InetFamily(unix.AF_INET6), nil
	default:
		return 0, fmt.Errorf("cleaning conntrack flows: unknown IP family %q", family)
	}
}

// ipProtocolOf returns the IP protocol number of a cleaned protocol, and
// false for protocols that are never cleaned.
func ipProtocolOf(protocol v1.Protocol) (uint8, bool) {
	switch protocol {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP, true
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP, true
	default:
		return 0, false
	}
}
