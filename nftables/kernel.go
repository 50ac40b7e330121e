package nftables

import (
	"fmt"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Conn applies transactions to nftables state. NewNetlinkConn programs the kernel over
// netlink; Fake keeps the state in memory for tests and the packet tracer.
type Conn interface {
	// Apply applies every operation of tx atomically, or none of them.
	Apply(tx *Transaction) error
}

const (
	// elementsPerMessage bounds the elements of one netlink message: the element list is one
	// netlink attribute, whose length must fit in 16 bits (an element takes at most ~220 bytes).
	elementsPerMessage = 256
	// ackTimeout bounds the wait for the kernel's answers: it processes the whole batch while
	// receiving it, so the answers are queued by the time the send returns.
	ackTimeout = time.Minute
	// minSocketBuffer is the least send and receive buffer asked for a batch.
	minSocketBuffer = 1 << 20
)

// netlinkConn is the Conn programming a network namespace's nftables over netlink.
type netlinkConn struct {
	netNSFd int
}

// NewNetlinkConn returns a Conn that programs the nftables state of the network namespace
// netNSFd refers to (0: the current namespace), one netlink batch per transaction.
// Equivalent to: `nft -f` of the transaction's text.
func NewNetlinkConn(netNSFd int) Conn { return &netlinkConn{netNSFd: netNSFd} }

// Apply sends tx as one netlink batch. The kernel applies a batch atomically: packets see the
// state before or after it, never in between. The batch is sent with one sendmsg (the socket
// buffers are sized for it), so no size limit splits it.
func (c *netlinkConn) Apply(tx *Transaction) error {
	if tx.Empty() {
		return nil
	}
	b, err := encodeTransaction(tx)
	if err != nil {
		return err
	}
	return c.sendBatch(b)
}

// setKey identifies a set within one batch.
type setKey struct {
	fam   *family
	table string
	name  string
}

// batcher queues a transaction's operations other than elements on one google/nftables
// connection (which encodeTransaction captures).
type batcher struct {
	conn *gnft.Conn
	sets map[setKey]*gnft.Set
}

// sizeSocket makes c's buffers large enough for a batch of about bytes bytes and messages
// answers, and bounds the wait for the answers. Forcing the sizes needs CAP_NET_ADMIN, which
// programming nftables needs anyway.
func sizeSocket(c *netlink.Conn, bytes, messages int) error {
	snd := max(2*bytes, minSocketBuffer)
	rcv := max(2048*messages, minSocketBuffer)
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("sizing the netlink socket: %w", err)
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, snd)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcv)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("sizing the netlink socket buffers (send %d, receive %d bytes): %w", snd, rcv, err)
	}
	return c.SetReadDeadline(time.Now().Add(ackTimeout))
}

// familySets implements setInfo for the rules of one family's table in a batch.
type familySets struct {
	b     *batcher
	fam   *family
	table string
}

// lookupSet implements setInfo.
func (s familySets) lookupSet(name string) (uint32, bool) {
	var id uint32
	if set := s.b.sets[setKey{fam: s.fam, table: s.table, name: name}]; set != nil {
		id = set.ID
	}
	spec := s.fam.setIndex[name]
	return id, spec != nil && spec.interval
}

// queue queues one operation.
func (b *batcher) queue(o op) error {
	table := o.fam.tableRef(o.table)
	switch o.kind {
	case opAddTable:
		b.conn.AddTable(table)
	case opDeleteTable:
		b.conn.DelTable(table)
	case opAddSet:
		set := gnftSet(o.fam, table, o.set)
		if err := b.conn.AddSet(set, nil); err != nil {
			return fmt.Errorf("adding set %s: %w", o.set.name, err)
		}
		b.sets[setKey{fam: o.fam, table: o.table, name: o.set.name}] = set
	case opAddChain:
		return b.addChain(o, table)
	case opDeleteChain:
		b.conn.DelChain(&gnft.Chain{Name: o.chain.name, Table: table})
	}
	return nil
}

// addChain queues a chain and its rules.
func (b *batcher) addChain(o op, table *gnft.Table) error {
	ch := &gnft.Chain{Name: o.chain.name, Table: table}
	if h := o.chain.base; h != nil {
		ch.Type = gnft.ChainType(h.typ)
		hook, ok := hooks[h.hook]
		if !ok {
			return fmt.Errorf("chain %s: unknown hook %q", o.chain.name, h.hook)
		}
		prio := gnft.ChainPriority(h.priority)
		accept := gnft.ChainPolicyAccept
		ch.Hooknum, ch.Priority, ch.Policy = hook, &prio, &accept
	}
	b.conn.AddChain(ch)
	sets := familySets{b: b, fam: o.fam, table: o.table}
	for i, ru := range o.chain.rules {
		exprs, udata, err := encodeRule(o.fam, ru, sets)
		if err != nil {
			return fmt.Errorf("chain %s rule %d: %w", o.chain.name, i, err)
		}
		b.conn.AddRule(&gnft.Rule{Table: table, Chain: ch, Exprs: exprs, UserData: udata})
	}
	return nil
}

var hooks = map[string]*gnft.ChainHook{
	"prerouting":  gnft.ChainHookPrerouting,
	"input":       gnft.ChainHookInput,
	"forward":     gnft.ChainHookForward,
	"output":      gnft.ChainHookOutput,
	"postrouting": gnft.ChainHookPostrouting,
}

// verdictKinds are the kernel's codes of the verdicts an element can hold.
var verdictKinds = map[verdictKind]expr.VerdictKind{verdictGoto: expr.VerdictGoto, verdictJump: expr.VerdictJump, verdictDrop: expr.VerdictDrop, verdictAccept: expr.VerdictAccept}

// gnftSet converts a set declaration.
func gnftSet(f *family, table *gnft.Table, s *setSpec) *gnft.Set {
	out := &gnft.Set{
		Table:         table,
		Name:          s.name,
		Comment:       s.comment,
		KeyType:       datatypeOf(s.key),
		Interval:      s.interval,
		Concatenation: s.interval && len(s.key) > 1,
	}
	switch {
	case s.verdictMap:
		out.IsMap, out.DataType = true, gnft.TypeVerdict
	case s.data != nil:
		out.IsMap, out.DataType = true, datatypeOf(s.data)
	}
	if s.dynamic {
		out.Dynamic, out.HasTimeout, out.Size = true, true, affinitySetSize
	} else if s.size > 0 {
		out.Size = uint32(s.size)
	}
	return out
}

// datatypeOf returns the datatype of a (possibly concatenated) key or value.
func datatypeOf(types []fieldType) gnft.SetDatatype {
	dts := make([]gnft.SetDatatype, len(types))
	for i, t := range types {
		dts[i] = t.datatype()
	}
	if len(dts) == 1 {
		return dts[0]
	}
	dt, err := gnft.ConcatSetType(dts...)
	if err != nil { // more than 5 components: never for our sets
		return gnft.TypeInvalid
	}
	return dt
}
