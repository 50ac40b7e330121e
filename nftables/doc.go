// Package nftables is nodeproxy's nftables backend: it programs the tables `ip nodeproxy` and
// `ip6 nodeproxy` over netlink (github.com/google/nftables; no nft binary at run time) with
// upstream kube-proxy's Service semantics, in a shape whose chain count does not grow with the
// number of Services: per-Service state lives in set and map elements, and chains exist per
// endpoint count. README.md pictures the ruleset.
//
// Typical use, wired to the mode-neutral core:
//
//	p, err := nftables.New(nftables.Config{Families: []v1.IPFamily{v1.IPv4Protocol}, ...})
//	core, err := proxier.NewCore(proxier.CoreConfig{...}, p)
//	core.SyncLoop(ctx)
//
// Each Sync is built in three steps: buildPort computes the elements and chains one service
// port wants (a pure function of the port, its endpoints and the node); familyState diffs that
// against what was committed before (kept in memory; the kernel is never listed while syncing);
// and the resulting Transaction is applied atomically through a Conn: NewNetlinkConn for the
// kernel, or Fake, an in-memory implementation with a canonical Dump and a packet tracer.
package nftables
