package nftables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// DefaultMasqueradeBit is the packet mark bit used when Config.MasqueradeBit is 0, as upstream.
const DefaultMasqueradeBit = 14

// Config configures the nftables backend.
type Config struct {
	// Families are the IP families to program (a table each).
	Families []v1.IPFamily
	// NodeIPs are the node's primary IPs; LoadBalancer source ranges that hold one also admit
	// the LoadBalancer IPs as sources (traffic from the node itself to a local VIP).
	NodeIPs []netip.Addr
	// Detectors tell traffic from local pods apart, per family (missing: not implemented).
	Detectors map[v1.IPFamily]proxier.LocalDetector
	// NodePortAddresses are the ranges NodePorts answer on, per family; nil or empty for a
	// family (or a /0 range) means every local address. Loopback addresses never answer.
	NodePortAddresses map[v1.IPFamily][]netip.Prefix
	// ServiceCIDRs are the service ranges; traffic to their unallocated addresses is dropped
	// (empty: no such rule).
	ServiceCIDRs []netip.Prefix
	// MasqueradeBit is the packet mark bit that asks for masquerading (0: DefaultMasqueradeBit).
	MasqueradeBit int
	// MasqueradeAll masquerades all ClusterIP traffic.
	MasqueradeAll bool
	// NetNSFd is the network namespace to program (0: the current one).
	NetNSFd int
	// Metrics, if set, counts sync failures (NFTablesSyncFailuresTotal).
	Metrics *metrics.Metrics
}

// Proxier is the nftables backend. It owns the tables `ip nodeproxy` and `ip6 nodeproxy`,
// keeps what it committed in memory and writes each sync as one netlink transaction holding
// only what changed. It implements proxier.Backend; Sync must not be called concurrently.
type Proxier struct {
	cfg      Config
	conn     Conn
	families map[v1.IPFamily]*familyConfig
	// states hold what is committed per family; a missing state makes the next sync rebuild
	// the family's table from scratch (at startup and after a failed transaction).
	states map[v1.IPFamily]*familyState
	// monitor is the drift monitor Run started (nil: none); Sync brackets its commits for it.
	monitor atomic.Pointer[driftMonitor]
	// commitMu is held across each commit and while a monitor starts (monitor.go).
	commitMu sync.Mutex
	// unwatchedGen is the generation after the last commit made while no monitor ran, with
	// bit 32 set (0: none; unwatchedGenUnknown: not readable; monitor.go); guarded by commitMu.
	unwatchedGen uint64
	// rebuild, set when another process changed our tables, makes the next Sync rebuild them.
	rebuild atomic.Bool
}

var _ proxier.Backend = (*Proxier)(nil)

// New returns a Proxier that programs the kernel over netlink. Nothing is programmed before
// the first Sync, which replaces any earlier table of ours or upstream kube-proxy's.
func New(cfg Config) (*Proxier, error) {
	return NewWithConn(cfg, NewNetlinkConn(cfg.NetNSFd))
}

// NewWithConn returns a Proxier applying its transactions to conn (a Fake in tests).
func NewWithConn(cfg Config, conn Conn) (*Proxier, error) {
	if len(cfg.Families) == 0 {
		return nil, fmt.Errorf("configuring the nftables proxier: no IP family")
	}
	bit := cfg.MasqueradeBit
	if bit == 0 {
		bit = DefaultMasqueradeBit
	}
	if bit < 0 || bit > 31 {
		return nil, fmt.Errorf("configuring the nftables proxier: masquerade bit %d is not in [0, 31]", bit)
	}
	p := &Proxier{cfg: cfg, conn: conn, families: map[v1.IPFamily]*familyConfig{}, states: map[v1.IPFamily]*familyState{}}
	for _, f := range cfg.Families {
		fc, err := newFamilyConfig(cfg, f, uint32(1)<<bit)
		if err != nil {
			return nil, fmt.Errorf("configuring the nftables proxier: %w", err)
		}
		if p.families[f] != nil {
			return nil, fmt.Errorf("configuring the nftables proxier: IP family %s given twice", f)
		}
		p.families[f] = fc
	}
	return p, nil
}

// newFamilyConfig extracts one family's configuration.
func newFamilyConfig(cfg Config, ipFamily v1.IPFamily, mark uint32) (*familyConfig, error) {
	fam, err := familyOf(ipFamily)
	if err != nil {
		return nil, err
	}
	fc := &familyConfig{fam: fam, mark: mark, masqAll: cfg.MasqueradeAll, detector: cfg.Detectors[ipFamily]}
	if d := fc.detector; d.Implemented() && (d.Mode == proxier.LocalModeClusterCIDR || d.Mode == proxier.LocalModeNodeCIDR) && !fam.contains(d.CIDR.Addr()) {
		return nil, fmt.Errorf("%s local traffic detector has a CIDR of another family: %s", ipFamily, d.CIDR)
	}
	for _, p := range cfg.NodePortAddresses[ipFamily] {
		if !fam.contains(p.Addr()) {
			continue
		}
		if p.Bits() == 0 {
			fc.nodePortAddrs = nil
			break
		}
		fc.nodePortAddrs = append(fc.nodePortAddrs, p.Masked())
	}
	for _, p := range cfg.ServiceCIDRs {
		if fam.contains(p.Addr()) && p.Bits() > 0 {
			fc.serviceCIDRs = append(fc.serviceCIDRs, p.Masked())
		}
	}
	for _, ip := range cfg.NodeIPs {
		if fam.contains(ip) {
			fc.nodeIPs = append(fc.nodeIPs, ip.Unmap())
		}
	}
	return fc, nil
}

// Sync implements proxier.Backend: it programs every family of req in one transaction. The
// first sync of a family (and the first after a failure) replaces the whole table, deleting any
// earlier table of ours or upstream kube-proxy's in the same transaction; a full sync rebuilds
// the desired state from req.Trackers and writes the difference; any other sync writes only
// the difference of the changed service ports.
func (p *Proxier) Sync(ctx context.Context, req *proxier.SyncRequest) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("syncing nftables: %w", err)
	}
	start := time.Now()
	if p.rebuild.Swap(false) {
		clear(p.states) // the kernel no longer holds what they say
	}
	tx, next, err := p.transaction(req)
	if errors.Is(err, errSetsOutgrown) {
		// Every family's table is built again (one family's table replaced in a transaction
		// that also changes the other's would reorder the other's operations, see hooksLast).
		klog.InfoS("Building the nftables tables again with larger sets", "reason", err.Error())
		clear(p.states)
		tx, next, err = p.transaction(req)
	}
	if err != nil {
		p.failed(next) // states changed in place no longer match the kernel
		return err
	}
	own := p.beginOwnCommit(tx)
	err = p.apply(tx, own)
	own.end(err == nil)
	if err != nil {
		p.failed(next)
		logFailedTransaction(tx)
		return fmt.Errorf("syncing nftables (full=%t): %w", req.Full, err)
	}
	for f, st := range next {
		p.states[f] = st
	}
	klog.V(2).InfoS("Synced nftables", "full", req.Full, "operations", tx.Operations(), "elapsed", time.Since(start))
	return nil
}

// errSetsOutgrown: a sync would take a set past its size (capacity.go).
var errSetsOutgrown = errors.New("a set would outgrow its size")

// transaction builds the transaction of req and the families' states once it is applied. On
// error the states of the families returned were changed in place.
func (p *Proxier) transaction(req *proxier.SyncRequest) (*Transaction, map[v1.IPFamily]*familyState, error) {
	tx := &Transaction{}
	next := map[v1.IPFamily]*familyState{}
	for i, co := range req.Checkouts {
		fc := p.families[co.Family]
		if fc == nil {
			klog.V(2).InfoS("Skipping changes of an IP family the nftables proxier does not program", "ipFamily", co.Family)
			continue
		}
		var tracker *proxier.Tracker
		if i < len(req.Trackers) && req.Trackers[i].Family() == co.Family {
			tracker = req.Trackers[i]
		}
		st, err := p.syncFamily(tx, fc, co, tracker, req)
		next[co.Family] = st
		if err != nil {
			return nil, next, err
		}
	}
	return tx, next, nil
}

// apply applies tx: in stages when it creates the tables on a node that has none and no
// drift monitor watches the commits yet (see staged.go), otherwise as one batch.
func (p *Proxier) apply(tx *Transaction, own *ownCommit) error {
	if !createsTables(tx) {
		return p.conn.Apply(tx)
	}
	tx = hooksLast(tx)
	if s, ok := p.conn.(stager); ok && own.unwatched {
		staged, err := s.ApplyStaged(tx)
		if staged || err != nil {
			return err
		}
	}
	return p.conn.Apply(tx)
}

// syncFamily adds one family's operations to tx and returns the family's state as it will be
// once tx is applied.
func (p *Proxier) syncFamily(tx *Transaction, fc *familyConfig, co *proxier.Checkout, tracker *proxier.Tracker, req *proxier.SyncRequest) (*familyState, error) {
	st := p.states[fc.fam.ipFamily]
	switch {
	case (st == nil || req.Full) && tracker == nil:
		return nil, fmt.Errorf("syncing nftables: no tracker for IP family %s", fc.fam.ipFamily)
	case st == nil:
		st = newTable(tx, fc, tracker, req.Node)
	case req.Full:
		resync(st, tracker, req.Node)
	default:
		for i := range co.Changes {
			ch := &co.Changes[i]
			var next *portState
			if ch.Current != nil {
				next = buildPort(fc, ch.Current, ch.Endpoints, req.Node, st.ports[ch.Name], nil)
			}
			st.setPort(ch.Name, next)
		}
	}
	ops := newFamilyOps(fc)
	st.flush(ops)
	if err := st.limits.overflow(ops); err != nil {
		return st, fmt.Errorf("%w: %s: %w", errSetsOutgrown, fc.fam.ipFamily, err)
	}
	st.limits.record(ops)
	ops.appendTo(tx)
	return st, nil
}

// newTable returns the state of a new table holding the tracker's ports, and writes the
// table's setup into tx, its sets sized for the elements the ports add (their elements follow
// when the state is flushed).
func newTable(tx *Transaction, fc *familyConfig, tracker *proxier.Tracker, node endpoints.Node) *familyState {
	st := newFamilyState(fc, tracker.ServicePortCount())
	resync(st, tracker, node)
	specs := sizedSpecs(fc.fam, st.limits.counts)
	st.limits = newSetLimits(specs, st.limits.counts)
	writeTableSetup(tx, fc, specs)
	return st
}

// buildChunkMin is the fewest ports buildPorts gives each goroutine.
const buildChunkMin = 256

// buildPorts builds the states of the tracker's ports (entries) in parallel (buildPort is a pure
// function of its arguments; st is only read), adding their elements to st's fresh counts.
func buildPorts(st *familyState, entries []trackedPort, node endpoints.Node) []*portState {
	built := make([]*portState, len(entries))
	chunks := proxier.ChunkCount(len(entries), buildChunkMin)
	counts := make([]setCounts, chunks)
	proxier.RunChunks(len(entries), chunks, func(c, lo, hi int) {
		if st.fresh {
			counts[c] = setCounts{}
		}
		for i := lo; i < hi; i++ {
			e := entries[i]
			built[i] = buildPort(st.fc, e.sp, e.eps, node, st.ports[e.sp.Name], counts[c])
		}
	})
	for _, c := range counts {
		for set, n := range c {
			st.limits.counts[set] += n
		}
	}
	return built
}

// trackedPort is a service port of the tracker with its endpoints.
type trackedPort struct {
	sp  *proxier.ServicePort
	eps []endpoints.Endpoint
}

// resync makes st want exactly the ports the tracker holds. The ports are copied out of the
// tracker first, so that its lock is not held while building.
func resync(st *familyState, tracker *proxier.Tracker, node endpoints.Node) {
	entries := make([]trackedPort, 0, tracker.ServicePortCount())
	tracker.ForEach(func(sp *proxier.ServicePort, eps []endpoints.Endpoint) {
		entries = append(entries, trackedPort{sp: sp, eps: eps})
	})
	built := buildPorts(st, entries, node)
	seen := make(map[endpoints.ServicePortName]bool, len(entries))
	for i, e := range entries {
		seen[e.sp.Name] = true
		st.setPort(e.sp.Name, built[i])
	}
	var gone []endpoints.ServicePortName
	for name := range st.ports {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	for _, name := range gone {
		st.setPort(name, nil)
	}
}

// writeTableSetup replaces the family's table by an empty one with the sets (as declared in
// specs) and every static chain, and deletes upstream kube-proxy's table, all in tx (so packets
// never see a missing table). Adding a table before deleting it makes the deletion succeed
// whether or not it existed.
func writeTableSetup(tx *Transaction, fc *familyConfig, specs []*setSpec) {
	fam := fc.fam
	for _, name := range []string{TableName, UpstreamTableName} {
		tx.add(op{kind: opAddTable, fam: fam, table: name})
		tx.add(op{kind: opDeleteTable, fam: fam, table: name})
	}
	tx.add(op{kind: opAddTable, fam: fam, table: TableName})
	for _, s := range specs {
		tx.add(op{kind: opAddSet, fam: fam, table: TableName, set: s})
	}
	for _, c := range fc.staticChains() {
		tx.add(op{kind: opAddChain, fam: fam, table: TableName, chain: &c})
	}
}

// failedTransactionLines bounds the lines of a failed transaction that are logged.
const failedTransactionLines = 200

// logFailedTransaction logs, at V(4), a failed transaction's size and its first operations in
// nft syntax (upstream logs the whole failed transaction at that level).
func logFailedTransaction(tx *Transaction) {
	logger := klog.V(4)
	if !logger.Enabled() {
		return
	}
	var lines []string
	for _, o := range tx.expanded().ops {
		left := failedTransactionLines - len(lines)
		if left <= 0 {
			break
		}
		if len(o.elems) > left {
			o.elems = o.elems[:left]
		}
		lines = append(lines, o.lines()...)
	}
	lines = lines[:min(len(lines), failedTransactionLines)]
	logger.InfoS("Failed nftables transaction", "operations", tx.Operations(), "shownLines", len(lines),
		"transaction", strings.Join(lines, "\n"))
}

// failed forgets the state of the families of a failed transaction: it no longer matches the
// kernel, so their next sync rebuilds their tables.
func (p *Proxier) failed(families map[v1.IPFamily]*familyState) {
	for f := range families {
		delete(p.states, f)
		if p.cfg.Metrics != nil && p.cfg.Metrics.NFTablesSyncFailuresTotal != nil {
			p.cfg.Metrics.NFTablesSyncFailuresTotal.WithLabelValues(string(f)).Inc()
		}
	}
}

// Cleanup removes nodeproxy's tables and upstream kube-proxy's nftables tables (ip and ip6)
// from the network namespace netNSFd refers to (0: the current one), in one transaction.
// Missing tables are not an error. Equivalent to: `nft delete table ip nodeproxy` (and ip6,
// and both kube-proxy tables).
func Cleanup(netNSFd int) error {
	tx := &Transaction{}
	for _, fam := range []*family{familyIPv4, familyIPv6} {
		for _, name := range []string{TableName, UpstreamTableName} {
			tx.add(op{kind: opAddTable, fam: fam, table: name})
			tx.add(op{kind: opDeleteTable, fam: fam, table: name})
		}
	}
	if err := NewNetlinkConn(netNSFd).Apply(tx); err != nil {
		return fmt.Errorf("cleaning up nftables tables: %w", err)
	}
	return nil
}
