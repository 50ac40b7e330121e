// Package conntrack removes stale connection-tracking flows after a proxy
// sync and applies the conntrack sysctls at startup. It is shared by every
// proxy mode (iptables, nftables, userspace).
//
// # Stale-flow cleanup
//
// UDP and SCTP are connectionless from the proxy's point of view: once the
// kernel has created a conntrack entry for a flow (DNATed to some endpoint, or
// not DNATed at all because the service had no endpoints yet), every later
// packet of that flow follows the entry, not the current rules. When an
// endpoint goes away, or a service that was black-holing traffic gains its
// first endpoint, the matching entries must be deleted so that the next packet
// is evaluated against the current rules. TCP is never cleaned: its flows end
// on their own and existing connections should keep working.
//
// A proxy describes every service port that changed as a [Target]: the
// protocol, the frontends (cluster IP, load-balancer IPs, external IPs) with
// the service port, the node port, and the endpoints that are serving now.
// [Cleaner.CleanStale] dumps the family's conntrack table once, through a
// netlink handle, and deletes each flow whose original destination is a
// target frontend (or, for a target with a node port and at least one serving
// endpoint, any address on the node port) and whose reply source is not a
// serving endpoint of that target. A flow that was never DNATed has the
// frontend itself as reply source, so it is stale as soon as the target is
// listed; a removed service port is a target with no serving endpoints, so all
// of its frontend flows go.
//
// Typical use in a proxier, after a successful sync:
//
//	cleaner := conntrack.NewCleaner(nil) // current network namespace
//	targets := []conntrack.Target{{
//		Protocol: v1.ProtocolUDP,
//		VIPs:     []netip.Addr{netip.MustParseAddr("10.96.0.10")},
//		Port:     53,
//		NodePort: 30053,
//		Serving:  []netip.AddrPort{netip.MustParseAddrPort("10.244.1.5:53")},
//	}}
//	deleted, err := cleaner.CleanStale(v1.IPv4Protocol, targets)
//	if err != nil {
//		klog.ErrorS(err, "Failed to clean stale conntrack flows", "deleted", deleted)
//	}
//
// The package never switches the namespace of the calling thread. There are
// three ways to reach a conntrack table:
//   - NewCleaner(nil): the calling thread's namespace, through the package's
//     own ctnetlink requests, which decode UDP and SCTP ports.
//   - NewCleanerAt(ns): namespace ns, same requests over a socket opened
//     there; Close it when done.
//   - NewCleaner(h) with a *netlink.Handle (for example from
//     netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)): h's namespace,
//     through h.ConntrackDeleteFilters. vishvananda/netlink v1.3.1 does not
//     decode SCTP ports, so this way cleans UDP only and skips SCTP targets.
//
// Unit tests of other packages use [Fake], which records the calls, through
// [Interface].
//
// # Sysctls
//
// [ApplySysctls] applies the conntrack part of the kube-proxy configuration at
// startup, like upstream kube-proxy: nf_conntrack_max is raised (never
// lowered) to max(maxPerCore*CPUs, min), with the scaled value capped at
// 1048576, the nf_conntrack hash table is grown to a quarter of it, and the
// TCP/UDP timeouts and tcp_be_liberal are set when configured:
//
//	err := conntrack.ApplySysctls("/", conntrack.SysctlConfig{
//		MaxPerCore:            32768,
//		Min:                   131072,
//		TCPEstablishedTimeout: 24 * time.Hour,
//		TCPCloseWaitTimeout:   time.Hour,
//	}, conntrack.HostNumCPU())
package conntrack
