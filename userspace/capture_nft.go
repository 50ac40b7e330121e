package userspace

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// Names in the capture tables.
const (
	// TableName is the name of the capture table in the ip and ip6 families.
	TableName        = "nodeproxy-userspace"
	mapServiceIPs    = "service-ips"
	mapNodePorts     = "service-nodeports"
	setListenerPorts = "listener-ports"
	chainPrerouting  = "prerouting"
	chainOutput      = "output"
	chainInputGuard  = "input-guard"
)

// netlinkBufferBytes is the socket buffer the capture's netlink socket asks for: one full sync
// is one netlink message per set, and 10,000 service ports make about a megabyte.
const netlinkBufferBytes = 64 << 20

// ctStatusDstNAT is IPS_DST_NAT of a conntrack entry's status: the flow was DNATed (redirect
// included).
const ctStatusDstNAT = 1 << 5

var (
	protoPortType = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	accept        = nftables.ChainPolicyAccept
)

// nftCapture programs the capture tables over netlink with google/nftables.
type nftCapture struct {
	netNSFd  int
	families []v1.IPFamily
}

// conn returns a netlink connection to nftables in the capture's network namespace.
func (c *nftCapture) conn() (*nftables.Conn, error) {
	var largeBuffers nftables.SockOption = forceSocketBuffers
	opts := []nftables.ConnOption{nftables.WithSockOptions(largeBuffers)}
	if c.netNSFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(c.netNSFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening an nftables netlink connection: %w", err)
	}
	return conn, nil
}

// Apply implements capturer: one batch for every family.
func (c *nftCapture) Apply(changes []familyChange) error {
	conn, err := c.conn()
	if err != nil {
		return err
	}
	for _, ch := range changes {
		t := captureTableOf(ch.family)
		if ch.full {
			buildTable(conn, t, ch)
		}
		if err := updateElements(conn, t, ch); err != nil {
			return err
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("committing the userspace capture tables: %w", err)
	}
	return nil
}

// Remove implements capturer.
func (c *nftCapture) Remove() error {
	return removeTables(c.netNSFd, c.families)
}

// removeTables deletes the capture tables of families: each is added first in the same batch,
// so a missing table is no error and nothing needs to be read.
func removeTables(netNSFd int, families []v1.IPFamily) error {
	c := &nftCapture{netNSFd: netNSFd}
	conn, err := c.conn()
	if err != nil {
		return err
	}
	for _, f := range families {
		t := captureTableOf(f)
		conn.AddTable(t)
		conn.DelTable(t)
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("deleting the userspace capture tables: %w", err)
	}
	return nil
}

// captureTableOf returns the capture table of family.
func captureTableOf(family v1.IPFamily) *nftables.Table {
	if family == v1.IPv6Protocol {
		return &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv6}
	}
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
}

// captureSets returns the maps and sets of t, indexed by element kind.
func captureSets(t *nftables.Table) [3]*nftables.Set {
	addr := nftables.TypeIPAddr
	if t.Family == nftables.TableFamilyIPv6 {
		addr = nftables.TypeIP6Addr
	}
	return [3]*nftables.Set{
		elemService: {Table: t, Name: mapServiceIPs, IsMap: true, Concatenation: true,
			KeyType:  nftables.MustConcatSetType(addr, nftables.TypeInetProto, nftables.TypeInetService),
			DataType: nftables.TypeInetService},
		elemNodePort: {Table: t, Name: mapNodePorts, IsMap: true, Concatenation: true,
			KeyType: protoPortType, DataType: nftables.TypeInetService},
		elemListener: {Table: t, Name: setListenerPorts, Concatenation: true, KeyType: protoPortType},
	}
}

// buildTable queues the recreation of t, empty, with its chains and rules: add, delete and add
// again, so the table is replaced atomically whether or not it existed.
func buildTable(conn *nftables.Conn, t *nftables.Table, ch familyChange) {
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	for _, s := range captureSets(t) {
		// AddSet fails only for anonymous sets, which these are not.
		_ = conn.AddSet(s, nil)
	}
	v6 := t.Family == nftables.TableFamilyIPv6
	for _, hook := range []*nftables.ChainHook{nftables.ChainHookPrerouting, nftables.ChainHookOutput} {
		name := chainPrerouting
		if hook == nftables.ChainHookOutput {
			name = chainOutput
		}
		chain := conn.AddChain(&nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: hook, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
		for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			conn.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: serviceRedirect(proto, v6)})
		}
		prefixes := ch.nodePortAddresses
		if len(prefixes) == 0 {
			prefixes = []netip.Prefix{{}}
		}
		for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			for _, prefix := range prefixes {
				conn.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: nodePortRedirect(proto, prefix, v6)})
			}
		}
	}
	guard := conn.AddChain(&nftables.Chain{Name: chainInputGuard, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	conn.AddRule(&nftables.Rule{Table: t, Chain: guard, Exprs: inputGuard()})
}

// serviceRedirect is `meta l4proto <proto> redirect to :ip daddr . meta l4proto . th dport
// map @service-ips`.
func serviceRedirect(proto byte, v6 bool) []expr.Any {
	daddr := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
	protoReg, portReg := uint32(9), uint32(10)
	if v6 {
		daddr.Offset, daddr.Len = 24, 16
		protoReg, portReg = 2, 13
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		daddr,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: mapServiceIPs, DestRegister: 1, IsDestRegSet: true},
		&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	}
}

// nodePortRedirect is `meta l4proto <proto> fib daddr type local [ip daddr <prefix>] redirect
// to :meta l4proto . th dport map @service-nodeports` (no prefix match for the zero prefix).
func nodePortRedirect(proto byte, prefix netip.Prefix, v6 bool) []expr.Any {
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
	if prefix.IsValid() {
		exprs = append(exprs, daddrInPrefix(prefix, v6)...)
	}
	return append(exprs,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: mapNodePorts, DestRegister: 1, IsDestRegSet: true},
		&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	)
}

// daddrInPrefix is `ip daddr <prefix>` (or ip6).
func daddrInPrefix(prefix netip.Prefix, v6 bool) []expr.Any {
	prefix = prefix.Masked()
	addr := prefix.Addr().AsSlice()
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
	if v6 {
		load.Offset, load.Len = 24, 16
	}
	exprs := []expr.Any{load}
	if bits := prefix.Bits(); bits < len(addr)*8 {
		mask := make([]byte, len(addr))
		for i := range mask {
			n := min(max(bits-8*i, 0), 8)
			mask[i] = ^byte(0xff >> n)
		}
		exprs = append(exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)),
			Mask: mask, Xor: make([]byte, len(addr))})
	}
	return append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr})
}

// inputGuard is `meta l4proto . th dport @listener-ports ct status ! dnat drop`: listeners bind
// the unspecified address, and only redirected traffic may reach them.
func inputGuard() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: setListenerPorts},
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ctStatusDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// updateElements queues ch's element deletions, then its additions, one message per set.
func updateElements(conn *nftables.Conn, t *nftables.Table, ch familyChange) error {
	sets := captureSets(t)
	for _, step := range []struct {
		elems []captureElem
		queue func(*nftables.Set, []nftables.SetElement) error
	}{{ch.del, conn.SetDeleteElements}, {ch.add, conn.SetAddElements}} {
		var byKind [3][]nftables.SetElement
		for _, e := range step.elems {
			byKind[e.kind] = append(byKind[e.kind], nftElement(e))
		}
		for kind, elems := range byKind {
			if len(elems) == 0 {
				continue
			}
			if err := step.queue(sets[kind], elems); err != nil {
				return fmt.Errorf("queueing %s elements: %w", sets[kind].Name, err)
			}
		}
	}
	return nil
}

// nftElement encodes e: concatenated fields are padded to 4 bytes, ports are big endian.
func nftElement(e captureElem) nftables.SetElement {
	var key []byte
	if e.kind == elemService {
		key = append(key, e.addr.AsSlice()...)
	}
	key = append(key, protocolNumber(e.proto), 0, 0, 0, byte(e.port>>8), byte(e.port), 0, 0)
	if e.kind == elemListener {
		return nftables.SetElement{Key: key}
	}
	return nftables.SetElement{Key: key, Val: []byte{byte(e.target >> 8), byte(e.target)}}
}

// protocolNumber returns the IP protocol number of p.
func protocolNumber(p v1.Protocol) byte {
	switch p {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP
	default:
		return unix.IPPROTO_TCP
	}
}

// rawConner is what forceSocketBuffers needs of a netlink connection.
type rawConner interface {
	SyscallConn() (syscall.RawConn, error)
}

// forceSocketBuffers raises the netlink socket's buffers so a large batch fits in one
// message (SO_SNDBUFFORCE needs CAP_NET_ADMIN, which a proxy has; SO_SNDBUF is the fallback).
// It is generic only so that assigning it to an nftables.SockOption infers the netlink
// connection type without importing its module.
func forceSocketBuffers[C rawConner](c C) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("reaching the netlink socket: %w", err)
	}
	var sockErr error
	ctrlErr := raw.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], netlinkBufferBytes)
			if errors.Is(err, unix.EPERM) {
				err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], netlinkBufferBytes)
			}
			sockErr = errors.Join(sockErr, err)
		}
	})
	if err := errors.Join(ctrlErr, sockErr); err != nil {
		return fmt.Errorf("sizing the netlink socket buffers: %w", err)
	}
	return nil
}
