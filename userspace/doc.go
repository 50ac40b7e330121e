// Package userspace is nodeproxy's userspace proxy mode (`proxy --mode=userspace`): every
// service port gets a TCP or UDP listener in the proxy process, the kernel redirects the
// port's ClusterIP, NodePort, LoadBalancer-IP and externalIP traffic to that listener, and the
// proxy opens its own connection to an endpoint and copies the bytes.
//
// Typical use, as the proxy command wires it:
//
//	p, err := userspace.New(userspace.Config{Families: []v1.IPFamily{v1.IPv4Protocol}})
//	if err != nil { ... }
//	defer p.Close()
//	core, err := proxier.NewCore(proxier.CoreConfig{...}, p)
//	core.SyncLoop(ctx)
//
// The zero values of Config's limits and timeouts are useful: see the Default* constants.
//
// # Capture
//
// Each IP family has its own nftables table, `ip nodeproxy-userspace` and
// `ip6 nodeproxy-userspace`, programmed over netlink (no nft binary):
//
//	map service-ips       { daddr . l4proto . dport : listener port }  ClusterIP, externalIP, LB IP
//	map service-nodeports { l4proto . dport : listener port }           NodePorts on local addresses
//	set listener-ports    { l4proto . listener port }
//	chain prerouting, output (nat, dstnat): redirect to the listener port found in the maps
//	chain input-guard (filter, input): drop packets to a listener port that were not redirected
//
// `redirect` rewrites the destination to the primary address of the incoming interface, or to
// loopback for traffic the node itself sends, so listeners bind the unspecified address by
// default, and input-guard keeps them from being reached directly. A sync changes only the map
// elements of the service ports that changed, all families in one netlink batch; a full sync
// recreates the tables atomically. The kernel is never read on the sync path.
//
// # Forwarding
//
// A new TCP connection or UDP flow gets its endpoints from endpoints.Choose: cluster endpoints
// for traffic to the ClusterIP, and for traffic to a NodePort, LoadBalancer IP or externalIP of
// a Service with externalTrafficPolicy Local the node-local endpoints only (connections the
// node itself makes keep using the cluster endpoints, as upstream short-circuits them). Among
// them it goes round robin, honours sessionAffinity ClientIP (per client IP and service port,
// with the Service's timeout), and when a dial fails tries the next endpoint, each at most once.
// Endpoints always see the node as the client: this mode cannot preserve the client address.
//
// TCP is copied with io.Copy between *net.TCPConn (splice on Linux) and half-closed in both
// directions; UDP keeps one session (one connected socket) per client address with an idle
// timeout, and replies leave from the address the client's datagrams were redirected to, so
// conntrack turns the source back into the service address. SCTP is not supported: SCTP
// service ports are reported once in the log and skipped. See README.md for the differences
// from the kernel modes.
package userspace
