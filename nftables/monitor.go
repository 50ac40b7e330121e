package nftables

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Drift repair. The kernel multicasts every committed nftables change to the NFNLGRP_NFTABLES
// group of the network namespace: one message per table, chain, rule, set or element added or
// deleted, then a NEWGEN message carrying the new generation id of the ruleset (each commit
// increments it by one). The monitor reads that stream (it never lists the ruleset) and groups
// it per generation. A generation that touched one of our tables is ours if one of our own
// commits produced it; anything else is drift.
//
// Own commits are told apart by generation: Sync reads the generation before and after its
// batch (NFT_MSG_GETGEN, one small request each, only while a monitor runs), so its commit is
// one of the generations in between. At most one generation in that range may touch our
// tables; a second one is someone else's. Notifications lost to a full socket buffer
// (ENOBUFS) count as touching: each lost generation is ours only if one of our commits
// explains it.

// monitorReceiveBuffer is the event socket's receive buffer in bytes: a cold start of a large
// cluster commits one notification per element, and the kernel drops what does not fit (a
// variable so that tests can force losses).
var monitorReceiveBuffer = 64 << 20

const (
	// generationTimeout bounds one generation query.
	generationTimeout = 5 * time.Second
	// monitorRetryMin and monitorRetryMax bound the wait before restarting a failed monitor.
	monitorRetryMin, monitorRetryMax = time.Second, time.Minute
	// maxLostGenerations bounds the generations examined one by one after a loss; more lost
	// generations than that are drift without further examination.
	maxLostGenerations = 4096
)

// Run watches the nftables changes of the proxier's network namespace until ctx is done. When
// another process changes one of the proxier's tables (deletes or flushes the table, a chain,
// a set or map, rules or elements; or adds to them), the next Sync rebuilds every table from
// scratch in one transaction, and onDrift is called (from Run's goroutine or from Sync's) to
// ask for that sync soon: wire it to proxier.Core.ForceFullSync. Changes made by the proxier's
// own syncs never call it. Elements of the ClientIP affinity sets, which packets update, are
// not watched. If watching fails, Run restarts it and rebuilds the tables once, since changes
// may have been missed. Run must not be called concurrently with itself.
func (p *Proxier) Run(ctx context.Context, onDrift func()) {
	delay := monitorRetryMin
	missed := false
	for {
		m, err := p.startMonitor(onDrift)
		if err == nil {
			if missed {
				m.drift([]string{"monitor restarted: changes may have been missed"})
			}
			err = m.watch(ctx)
			p.monitor.CompareAndSwap(m, nil)
			m.close()
			missed, delay = true, monitorRetryMin
		}
		if ctx.Err() != nil {
			return
		}
		klog.ErrorS(err, "nftables drift monitor failed; restarting it", "retryIn", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, monitorRetryMax)
	}
}

// startMonitor subscribes a monitor and makes Sync bracket its commits for it. It holds
// commitMu, so that every commit is either before the monitor's first generation or bracketed.
func (p *Proxier) startMonitor(onDrift func()) (*driftMonitor, error) {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	m, err := newDriftMonitor(p, onDrift)
	if err != nil {
		return nil, err
	}
	if m.changedUnwatched() {
		m.drift([]string{"nftables changed between the last unwatched sync and the start of the monitor"})
	}
	p.monitor.Store(m)
	return m, nil
}

// ownCommit brackets one of the proxier's own commits for the drift monitor.
type ownCommit struct {
	p *Proxier
	m *driftMonitor // nil: no monitor to tell
	// unwatched is a commit while no monitor runs: end records the generation after it.
	unwatched bool
}

// beginOwnCommit starts an own commit of tx: while a monitor runs, it reads the generation
// before the commit. end must follow.
func (p *Proxier) beginOwnCommit(tx *Transaction) *ownCommit {
	p.commitMu.Lock()
	c := &ownCommit{p: p}
	if tx.Empty() {
		return c
	}
	m := p.monitor.Load()
	if m == nil {
		c.unwatched = true
		return c
	}
	gen, err := m.gens.current()
	if err != nil {
		m.fail(err)
		return c
	}
	m.det.begin(gen)
	c.m = m
	return c
}

// end ends the commit: it reads the generation after it and tells the monitor; committed says
// whether the batch was accepted.
func (c *ownCommit) end(committed bool) {
	defer c.p.commitMu.Unlock()
	if c.unwatched && committed {
		c.p.noteUnwatchedCommit()
	}
	if c.m == nil {
		return
	}
	gen, err := c.m.gens.current()
	if err != nil {
		c.m.fail(err)
		return
	}
	c.m.drift(c.m.det.end(gen, committed))
}

// unwatchedGenUnknown marks an unwatched commit whose generation could not be read: a
// monitor starting after it assumes someone else committed too.
const unwatchedGenUnknown = 1 << 33

// noteUnwatchedCommit records the generation after a commit made while no monitor ran (the
// first sync: the monitor starts after it, so that the kernel does not copy the cold start's
// hundreds of thousands of element notifications to it). A monitor that starts at another
// generation knows that someone else committed in between. Called with commitMu held.
func (p *Proxier) noteUnwatchedCommit() {
	q := &generationQuerier{netNSFd: p.cfg.NetNSFd}
	defer q.close()
	p.unwatchedGen = unwatchedGenUnknown
	if gen, err := q.current(); err == nil {
		p.unwatchedGen = 1<<32 | uint64(gen)
	}
}

// driftMonitor reads one network namespace's nftables notifications for a Proxier.
type driftMonitor struct {
	p       *Proxier
	onDrift func()
	events  *netlink.Conn
	gens    *generationQuerier
	// families are the nfproto values of the proxier's tables; dynamicSets the names of the sets
	// packets update.
	families    map[byte]bool
	dynamicSets map[string]bool
	det         *driftDetector
	// overflows counts the times notifications were lost; fatal is the error that stopped it.
	overflows atomic.Int64
	fatal     atomic.Pointer[error]
}

// newDriftMonitor subscribes to the notifications of p's network namespace.
func newDriftMonitor(p *Proxier, onDrift func()) (*driftMonitor, error) {
	m := &driftMonitor{p: p, onDrift: onDrift, families: map[byte]bool{}, dynamicSets: map[string]bool{},
		gens: &generationQuerier{netNSFd: p.cfg.NetNSFd}}
	for _, fc := range p.families {
		m.families[byte(fc.fam.table)] = true
		for _, s := range fc.fam.sets {
			if s.dynamic {
				m.dynamicSets[s.name] = true
			}
		}
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: p.cfg.NetNSFd})
	if err != nil {
		return nil, fmt.Errorf("opening the nftables notification socket: %w", err)
	}
	m.events = conn
	if err := forceReceiveBuffer(conn, monitorReceiveBuffer); err != nil {
		m.close()
		return nil, err
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		m.close()
		return nil, fmt.Errorf("joining the nftables notification group: %w", err)
	}
	gen, err := m.gens.current() // after joining: no generation falls in between
	if err != nil {
		m.close()
		return nil, err
	}
	m.det = newDriftDetector(gen)
	return m, nil
}

// changedUnwatched reports whether the generation moved since the last commit made while no
// monitor ran, or is unknown (call with commitMu held, before the monitor is published).
func (m *driftMonitor) changedUnwatched() bool {
	known := m.p.unwatchedGen
	m.p.unwatchedGen = 0
	return known != 0 && known != 1<<32|uint64(m.det.generation())
}

// forceReceiveBuffer sets a socket's receive buffer beyond rmem_max (needs CAP_NET_ADMIN).
func forceReceiveBuffer(c *netlink.Conn, size int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("sizing the nftables notification socket: %w", err)
	}
	var serr error
	err = raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) })
	if err = errors.Join(err, serr); err != nil {
		return fmt.Errorf("setting the nftables notification socket's receive buffer to %d bytes: %w", size, err)
	}
	return nil
}

// close releases the sockets.
func (m *driftMonitor) close() {
	if m.events != nil {
		_ = m.events.Close()
	}
	m.gens.close()
}

// fail stops the monitor with err (from Sync's goroutine: a generation query failed, so own
// commits can no longer be told apart); Run restarts it.
func (m *driftMonitor) fail(err error) {
	m.fatal.CompareAndSwap(nil, &err)
	_ = m.events.SetReadDeadline(time.Unix(1, 0))
}

// watch reads notifications until ctx is done or reading fails.
func (m *driftMonitor) watch(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = m.events.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	klog.V(2).InfoS("Watching nftables changes", "generation", m.det.generation())
	for {
		msgs, err := m.events.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if ferr := m.fatal.Load(); ferr != nil {
			return *ferr
		}
		if errors.Is(err, unix.ENOBUFS) {
			m.overflowed()
			continue
		}
		if err != nil {
			return fmt.Errorf("reading nftables notifications: %w", err)
		}
		var found []string
		for _, msg := range msgs {
			if ev, ok := m.parse(msg); ok {
				found = append(found, m.det.observe(ev)...)
			}
		}
		m.drift(found)
	}
}

// overflowed accounts for notifications the kernel dropped: every generation up to the
// current one may have touched our tables.
func (m *driftMonitor) overflowed() {
	m.overflows.Add(1)
	gen, err := m.gens.current()
	if err != nil {
		m.fail(err)
		return
	}
	klog.V(2).InfoS("nftables notifications were lost; checking the lost generations against own commits", "upTo", gen)
	m.drift(m.det.lost(gen))
}

// drift makes the next sync rebuild the tables and calls onDrift, if found holds anything.
func (m *driftMonitor) drift(found []string) {
	if len(found) == 0 {
		return
	}
	klog.InfoS("nftables tables were changed by another process; rebuilding them at the next sync", "changes", found)
	m.p.rebuild.Store(true)
	m.onDrift()
}

// nftEvent is the part of one notification the monitor needs.
type nftEvent struct {
	// commit marks a NEWGEN message (the end of a commit): gen is the new generation; proc
	// and pid say who committed.
	commit bool
	gen    uint32
	proc   string
	pid    uint32
	// Any other event touched one of our tables: kind is its NFT_MSG_* type, fam its family,
	// object the chain or set it names (nil if none). Described only when logged.
	kind   uint16
	fam    byte
	object []byte
}

// describe renders a change for the log, as nft would: "delete rule ip nodeproxy services".
func (ev nftEvent) describe() string {
	verb, ok := eventKinds[ev.kind]
	if !ok {
		verb.name = fmt.Sprintf("change (message %d)", ev.kind)
	}
	out := fmt.Sprintf("%s %s %s", verb.name, familyKeyword(ev.fam), TableName)
	if len(ev.object) > 0 {
		out += " " + string(ev.object)
	}
	return out
}

// eventKinds names the changes of the notification types (NFT_MSG_*) and the attribute that
// names their object (after the table, attribute 1 of every table-scoped message).
var eventKinds = map[uint16]struct {
	name   string
	object uint16
}{
	unix.NFT_MSG_NEWTABLE: {"add table", 0}, unix.NFT_MSG_DELTABLE: {"delete table", 0},
	unix.NFT_MSG_NEWCHAIN: {"add chain", unix.NFTA_CHAIN_NAME}, unix.NFT_MSG_DELCHAIN: {"delete chain", unix.NFTA_CHAIN_NAME},
	unix.NFT_MSG_NEWRULE: {"add rule", unix.NFTA_RULE_CHAIN}, unix.NFT_MSG_DELRULE: {"delete rule", unix.NFTA_RULE_CHAIN},
	unix.NFT_MSG_NEWSET: {"add set", unix.NFTA_SET_NAME}, unix.NFT_MSG_DELSET: {"delete set", unix.NFTA_SET_NAME},
	unix.NFT_MSG_NEWSETELEM: {"add element", unix.NFTA_SET_ELEM_LIST_SET},
	unix.NFT_MSG_DELSETELEM: {"delete element", unix.NFTA_SET_ELEM_LIST_SET},
}

// parse decodes a notification; ok is false for messages that matter neither as the end of a
// commit nor as a change to one of our tables. It allocates nothing for element notifications:
// a large commit sends one per element.
func (m *driftMonitor) parse(msg netlink.Message) (nftEvent, bool) {
	if msg.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES || len(msg.Data) < 4 {
		return nftEvent{}, false
	}
	kind := uint16(msg.Header.Type & 0xff)
	attrs := msg.Data[4:]
	if kind == unix.NFT_MSG_NEWGEN {
		v := attrValue(attrs, unix.NFTA_GEN_ID)
		if len(v) != 4 {
			return nftEvent{}, false
		}
		ev := nftEvent{commit: true, gen: binary.BigEndian.Uint32(v), proc: string(trimNUL(attrValue(attrs, unix.NFTA_GEN_PROC_NAME)))}
		if v := attrValue(attrs, unix.NFTA_GEN_PROC_PID); len(v) == 4 {
			ev.pid = binary.BigEndian.Uint32(v)
		}
		return ev, true
	}
	ev := nftEvent{kind: kind, fam: msg.Data[0]}
	if !m.families[ev.fam] || string(trimNUL(attrValue(attrs, 1))) != TableName {
		return nftEvent{}, false
	}
	if k, ok := eventKinds[kind]; ok && k.object != 0 {
		ev.object = trimNUL(attrValue(attrs, k.object))
	}
	if (kind == unix.NFT_MSG_NEWSETELEM || kind == unix.NFT_MSG_DELSETELEM) && m.dynamicSets[string(ev.object)] {
		return nftEvent{}, false
	}
	return ev, true
}

// familyKeyword names an nfproto value as nft does.
func familyKeyword(fam byte) string {
	switch fam {
	case unix.NFPROTO_IPV4:
		return "ip"
	case unix.NFPROTO_IPV6:
		return "ip6"
	}
	return fmt.Sprintf("family-%d", fam)
}

// attrValue returns the payload of the first top-level netlink attribute of type typ in b
// (nil if absent or malformed). It allocates nothing: the monitor reads one message per
// element of every large commit.
func attrValue(b []byte, typ uint16) []byte {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		t := binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(b) {
			return nil
		}
		if t == typ {
			return b[4:l]
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return nil
}

// trimNUL drops a string attribute's terminating NUL.
func trimNUL(b []byte) []byte {
	if i := slices.Index(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// generationQuerier reads the ruleset's generation id over its own netlink socket.
type generationQuerier struct {
	netNSFd int
	mu      sync.Mutex // guards conn
	conn    *netlink.Conn
}

// current returns the current generation id, retrying once over a fresh socket.
func (q *generationQuerier) current() (uint32, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	gen, err := q.query()
	if err != nil {
		gen, err = q.query()
	}
	return gen, err
}

// query asks once; a failed socket is closed so that the next query opens a new one.
func (q *generationQuerier) query() (uint32, error) {
	if q.conn == nil {
		conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: q.netNSFd})
		if err != nil {
			return 0, fmt.Errorf("opening a netlink socket to read the nftables generation: %w", err)
		}
		q.conn = conn
	}
	_ = q.conn.SetDeadline(time.Now().Add(generationTimeout))
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
	msgs, err := q.conn.Execute(req)
	if err == nil && (len(msgs) != 1 || len(msgs[0].Data) < 4) {
		err = fmt.Errorf("unexpected answer of %d messages", len(msgs))
	}
	if err != nil {
		_ = q.conn.Close()
		q.conn = nil
		return 0, fmt.Errorf("reading the nftables generation: %w", err)
	}
	v := attrValue(msgs[0].Data[4:], unix.NFTA_GEN_ID)
	if len(v) != 4 {
		return 0, fmt.Errorf("reading the nftables generation: no generation id in the answer")
	}
	return binary.BigEndian.Uint32(v), nil
}

// close closes the socket.
func (q *generationQuerier) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.conn != nil {
		_ = q.conn.Close()
		q.conn = nil
	}
}
