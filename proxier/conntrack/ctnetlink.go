package conntrack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// ctnetlinkTable dumps and deletes conntrack entries with its own netfilter
// netlink requests. It exists because the netlink package decodes the ports
// of TCP and UDP tuples only, so SCTP flows would all look like port 0.
type ctnetlinkTable struct {
	// sockets holds a netfilter socket opened in the target namespace; nil
	// opens a socket per request in the calling thread's namespace.
	sockets map[int]*nl.SocketHandle
}

var _ flowDeleter = (*ctnetlinkTable)(nil)

// newCtnetlinkTableAt opens a netfilter netlink socket in ns.
func newCtnetlinkTableAt(ns netns.NsHandle) (*ctnetlinkTable, error) {
	socket, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening a netfilter netlink socket in network namespace %s: %w", ns, err)
	}
	// Same limits as the per-request sockets of the netlink package.
	_ = socket.SetSendTimeout(&nl.SocketTimeoutTv)
	_ = socket.SetReceiveTimeout(&nl.SocketTimeoutTv)
	return &ctnetlinkTable{sockets: map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: {Socket: socket}}}, nil
}

// close closes the socket opened by newCtnetlinkTableAt.
func (t *ctnetlinkTable) close() {
	for _, socket := range t.sockets {
		socket.Close()
	}
}

// request builds a ctnetlink request for family.
func (t *ctnetlinkTable) request(table netlink.ConntrackTableType, operation, flags int, family netlink.InetFamily) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(table)<<8|operation, flags)
	req.Sockets = t.sockets
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(family), Version: nl.NFNETLINK_V0})
	return req
}

// ConntrackDeleteFilters dumps the family's table once and deletes the
// entries matched by any filter, like the netlink package's method of the
// same name but with SCTP ports decoded. An interrupted dump still deletes
// what it matched and returns an error that matches netlink.ErrDumpInterrupted.
func (t *ctnetlinkTable) ConntrackDeleteFilters(table netlink.ConntrackTableType, family netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error) {
	var stale [][]byte
	undecodable := 0
	dumpErr := t.request(table, nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP, family).ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		flow, err := decodeConntrackMessage(msg)
		if err != nil {
			undecodable++
			return true
		}
		for _, filter := range filters {
			if filter.MatchConntrackFlow(flow) {
				stale = append(stale, bytes.Clone(msg))
				break
			}
		}
		return true
	})
	if dumpErr != nil && !errors.Is(dumpErr, nl.ErrDumpInterrupted) {
		return 0, fmt.Errorf("dumping the conntrack table of family %d: %w", family, dumpErr)
	}
	if undecodable > 0 {
		klog.InfoS("Skipped undecodable conntrack entries", "family", family, "count", undecodable)
	}
	deleted, deleteErr := t.deleteEntries(table, family, stale)
	if dumpErr != nil {
		dumpErr = fmt.Errorf("dumping the conntrack table of family %d: %w", family, dumpErr)
	}
	return deleted, errors.Join(dumpErr, deleteErr)
}

// deleteEntries deletes dumped entries, each identified by its tuples and id
// as dumped. Entries already gone are not counted and are not errors.
func (t *ctnetlinkTable) deleteEntries(table netlink.ConntrackTableType, family netlink.InetFamily, entries [][]byte) (uint, error) {
	var deleted uint
	var failed int
	var lastErr error
	for _, msg := range entries {
		req := t.request(table, nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK, family)
		req.AddRawData(msg[nfgenmsgLen:])
		_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
		switch {
		case err == nil:
			deleted++
		case errors.Is(err, unix.ENOENT):
		default:
			failed++
			lastErr = err
		}
	}
	if failed > 0 {
		return deleted, fmt.Errorf("deleting %d of %d stale conntrack entries failed, last error: %w", failed, len(entries), lastErr)
	}
	return deleted, nil
}

// nfgenmsgLen is the size of the netfilter header before the attributes.
const nfgenmsgLen = 4

// decodeConntrackMessage decodes the family and both tuples (addresses,
// protocol and ports of any protocol) of a dumped ctnetlink message.
func decodeConntrackMessage(msg []byte) (*netlink.ConntrackFlow, error) {
	if len(msg) < nfgenmsgLen {
		return nil, fmt.Errorf("conntrack message of %d bytes is shorter than its header", len(msg))
	}
	flow := &netlink.ConntrackFlow{FamilyType: msg[0]}
	err := walkAttributes(msg[nfgenmsgLen:], func(attrType uint16, value []byte) error {
		switch attrType {
		case nl.CTA_TUPLE_ORIG:
			return decodeTuple(value, &flow.Forward)
		case nl.CTA_TUPLE_REPLY:
			return decodeTuple(value, &flow.Reverse)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decoding conntrack message: %w", err)
	}
	return flow, nil
}

// decodeTuple decodes a nested CTA_TUPLE_* attribute.
func decodeTuple(data []byte, tuple *netlink.IPTuple) error {
	return walkAttributes(data, func(attrType uint16, value []byte) error {
		switch attrType {
		case nl.CTA_TUPLE_IP:
			return walkAttributes(value, func(ipType uint16, ip []byte) error {
				if len(ip) != 4 && len(ip) != 16 {
					return fmt.Errorf("tuple address of %d bytes", len(ip))
				}
				switch ipType {
				case nl.CTA_IP_V4_SRC, nl.CTA_IP_V6_SRC:
					tuple.SrcIP = bytes.Clone(ip)
				case nl.CTA_IP_V4_DST, nl.CTA_IP_V6_DST:
					tuple.DstIP = bytes.Clone(ip)
				}
				return nil
			})
		case nl.CTA_TUPLE_PROTO:
			return walkAttributes(value, func(protoType uint16, field []byte) error {
				return decodeProtoField(protoType, field, tuple)
			})
		}
		return nil
	})
}

// decodeProtoField decodes one attribute of a CTA_TUPLE_PROTO.
func decodeProtoField(attrType uint16, field []byte, tuple *netlink.IPTuple) error {
	switch attrType {
	case nl.CTA_PROTO_NUM:
		if len(field) < 1 {
			return errors.New("empty tuple protocol")
		}
		tuple.Protocol = field[0]
	case nl.CTA_PROTO_SRC_PORT, nl.CTA_PROTO_DST_PORT:
		if len(field) < 2 {
			return fmt.Errorf("tuple port of %d bytes", len(field))
		}
		port := binary.BigEndian.Uint16(field)
		if attrType == nl.CTA_PROTO_SRC_PORT {
			tuple.SrcPort = port
		} else {
			tuple.DstPort = port
		}
	}
	return nil
}

// walkAttributes calls visit for each netlink attribute in data, with the
// type stripped of its nested/byte-order flags.
func walkAttributes(data []byte, visit func(attrType uint16, value []byte) error) error {
	native := nl.NativeEndian()
	for len(data) > 0 {
		if len(data) < unix.SizeofNlAttr {
			return fmt.Errorf("truncated attribute header of %d bytes", len(data))
		}
		length := int(native.Uint16(data[0:2]))
		if length < unix.SizeofNlAttr || length > len(data) {
			return fmt.Errorf("attribute length %d out of bounds (%d bytes left)", length, len(data))
		}
		if err := visit(native.Uint16(data[2:4])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), data[unix.SizeofNlAttr:length]); err != nil {
			return err
		}
		data = data[min(nlaAlign(length), len(data)):]
	}
	return nil
}

// nlaAlign rounds an attribute length up to the 4-byte netlink alignment.
func nlaAlign(length int) int {
	return (length + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
}
