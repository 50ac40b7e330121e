package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A table holds ~120,000 elements at 10,000 Services x 10 endpoints. google/nftables marshals
// each element through several intermediate attribute lists and copies every message again
// to send a batch, which made marshalling the largest user-space cost of a cold start and
// most of its garbage. rawBatch writes element messages itself, the same bytes (checked
// against google/nftables in rawbatch_test.go), straight into one buffer; the few other
// messages of a transaction (tables, sets, chains with their rules) are still marshalled by
// google/nftables and copied into the buffer (captureConn). The buffer is sent with one
// sendmsg.

// rawBatch is a netlink batch, encoded as it is built.
type rawBatch struct {
	buf []byte
	// messages counts the messages asking for an acknowledgement.
	messages int
}

// nfnlBatchResID is the nfgenmsg resource id of batch begin and end messages: the nftables
// subsystem.
const nfnlBatchResID = unix.NFNL_SUBSYS_NFTABLES

// newRawBatch starts a batch of about size bytes.
func newRawBatch(size int) *rawBatch {
	b := &rawBatch{buf: make([]byte, 0, size)}
	b.control(unix.NFNL_MSG_BATCH_BEGIN)
	return b
}

// control appends a batch begin or end message.
func (b *rawBatch) control(typ uint16) {
	h := b.header(typ, netlink.Request)
	b.buf = append(b.buf, unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, nfnlBatchResID)
	b.endMessage(h)
}

// header appends a netlink message header whose length endMessage fills in, and returns its
// offset. Sequence numbers are left 0: the kernel answers each message with its header.
func (b *rawBatch) header(typ uint16, flags netlink.HeaderFlags) int {
	off := len(b.buf)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, 0)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, uint16(flags))
	b.buf = binary.NativeEndian.AppendUint32(b.buf, 0) // sequence
	b.buf = binary.NativeEndian.AppendUint32(b.buf, 0) // port id
	return off
}

// endMessage pads the message begun at off and writes its length.
func (b *rawBatch) endMessage(off int) {
	b.pad()
	binary.NativeEndian.PutUint32(b.buf[off:], uint32(len(b.buf)-off))
}

// pad aligns the buffer to 4 bytes.
func (b *rawBatch) pad() {
	for len(b.buf)%4 != 0 {
		b.buf = append(b.buf, 0)
	}
}

// beginAttr appends an attribute header whose length endAttr fills in.
func (b *rawBatch) beginAttr(typ uint16) int {
	off := len(b.buf)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, 0)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
	return off
}

// endAttr writes the length of the attribute begun at off (its padded contents) and pads it.
func (b *rawBatch) endAttr(off int) {
	binary.NativeEndian.PutUint16(b.buf[off:], uint16(len(b.buf)-off))
	b.pad()
}

// attr appends an attribute holding data.
func (b *rawBatch) attr(typ uint16, data string) {
	off := b.beginAttr(typ)
	b.buf = append(b.buf, data...)
	binary.NativeEndian.PutUint16(b.buf[off:], uint16(len(b.buf)-off))
	b.pad()
}

// nested appends a nested attribute holding one attribute of type inner with data.
func (b *rawBatch) nested(typ, inner uint16, data string) {
	off := b.beginAttr(typ | unix.NLA_F_NESTED)
	b.attr(inner, data)
	b.endAttr(off)
}

// setElements appends one message adding (or, del, deleting) elems, at most
// elementsPerMessage, in a set of table.
func (b *rawBatch) setElements(fam *family, table string, spec *setSpec, elems []element, del bool) {
	typ := uint16(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)
	if del {
		typ = uint16(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELSETELEM)
	}
	msg := b.header(typ, netlink.Request|netlink.Acknowledge|netlink.Create)
	b.buf = append(b.buf, byte(fam.table), unix.NFNETLINK_V0, 0, 0)
	b.attr(unix.NFTA_SET_ELEM_LIST_SET, spec.name+"\x00")
	b.attr(unix.NFTA_SET_ELEM_LIST_SET_ID, "\x00\x00\x00\x00")
	b.attr(unix.NFTA_SET_ELEM_LIST_TABLE, table+"\x00")
	list := b.beginAttr(unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED)
	for i, e := range elems {
		b.element(spec, uint16(i+1), e, del)
	}
	b.endAttr(list)
	b.endMessage(msg)
	b.messages++
}

// element appends one element as google/nftables does (its attribute type is its index); a
// deletion carries only the key.
func (b *rawBatch) element(spec *setSpec, index uint16, e element, del bool) {
	item := b.beginAttr(index | unix.NLA_F_NESTED)
	b.nested(unix.NFTA_SET_ELEM_KEY, unix.NFTA_DATA_VALUE, e.key)
	if spec.interval && e.keyEnd != "" {
		b.nested(gnft.NFTA_SET_ELEM_KEY_END, unix.NFTA_DATA_VALUE, e.keyEnd)
	}
	if del {
		b.endAttr(item)
		return
	}
	switch {
	case spec.verdictMap:
		data := b.beginAttr(unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED)
		verdict := b.beginAttr(unix.NFTA_DATA_VERDICT | unix.NLA_F_NESTED)
		var code [4]byte
		binary.BigEndian.PutUint32(code[:], uint32(verdictKinds[e.verd.kind]))
		b.attr(unix.NFTA_VERDICT_CODE, string(code[:]))
		if e.verd.chain != "" {
			b.attr(unix.NFTA_VERDICT_CHAIN, e.verd.chain+"\x00")
		}
		b.endAttr(verdict)
		b.endAttr(data)
	case spec.data != nil && e.value != "":
		b.nested(unix.NFTA_SET_ELEM_DATA, unix.NFTA_DATA_VALUE, e.value)
	}
	if e.comment != "" {
		off := b.beginAttr(unix.NFTA_SET_ELEM_USERDATA)
		b.buf = append(b.buf, 0, byte(len(e.comment)+1)) // NFTNL_UDATA_SET_ELEM_COMMENT
		b.buf = append(b.buf, e.comment...)
		b.buf = append(b.buf, 0)
		binary.NativeEndian.PutUint16(b.buf[off:], uint16(len(b.buf)-off))
		b.pad()
	}
	b.endAttr(item)
}

// finish ends the batch and returns its bytes.
func (b *rawBatch) finish() []byte {
	b.control(unix.NFNL_MSG_BATCH_END)
	return b.buf
}

// bytesPerOperation sizes a batch's buffer: a table creation at 1,000 Services x 10 endpoints
// encodes to 45.7 bytes per operation (most are IPv4 endpoint elements); a larger batch grows
// the buffer.
const bytesPerOperation = 56

// encodeTransaction encodes tx as one batch: element operations directly (generated ones a
// bounded number at a time), every other operation through google/nftables, whose messages
// are captured instead of sent (captureConn).
func encodeTransaction(tx *Transaction) (*rawBatch, error) {
	b := newRawBatch(bytesPerOperation*tx.Operations() + 64<<10)
	capture := &captureConn{b: b}
	conn, err := gnft.New(gnft.WithTestDial(capture.dial))
	if err != nil {
		return nil, fmt.Errorf("opening the nftables message encoder: %w", err)
	}
	q := &batcher{conn: conn, sets: map[setKey]*gnft.Set{}}
	for _, o := range tx.ops {
		if o.kind != opAddElements && o.kind != opDeleteElements {
			if err := q.queue(o); err != nil {
				return nil, err
			}
			continue
		}
		if err := conn.Flush(); err != nil { // what was queued goes first
			return nil, fmt.Errorf("encoding nftables messages: %w", err)
		}
		if o.gen == nil {
			b.elements(o)
			continue
		}
		for _, part := range o.gen.split(generateChunk) {
			for _, g := range part.ops() {
				b.elements(g)
			}
		}
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("encoding nftables messages: %w", err)
	}
	return b, nil
}

// elements appends an element operation, elementsPerMessage elements per message.
func (b *rawBatch) elements(o op) {
	for start := 0; start < len(o.elems); start += elementsPerMessage {
		b.setElements(o.fam, o.table, o.set, o.elems[start:min(start+elementsPerMessage, len(o.elems))], o.kind == opDeleteElements)
	}
}

// captureConn stands in for the kernel behind a google/nftables connection: the messages a
// Flush sends are appended to b (without their batch begin and end), and each is answered
// with an acknowledgement.
type captureConn struct {
	b *rawBatch
}

// dial is the connection's nltest.Func: it receives the messages of a send, or nil when the
// connection waits for the next answer.
func (c *captureConn) dial(req []netlink.Message) ([]netlink.Message, error) {
	for _, m := range req {
		if t := uint16(m.Header.Type); t == unix.NFNL_MSG_BATCH_BEGIN || t == unix.NFNL_MSG_BATCH_END {
			continue
		}
		c.b.message(uint16(m.Header.Type), m.Header.Flags, m.Data)
	}
	ack := netlink.Message{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}
	return []netlink.Message{ack}, nil
}

// message appends a message of google/nftables's.
func (b *rawBatch) message(typ uint16, flags netlink.HeaderFlags, data []byte) {
	off := b.header(typ, flags)
	b.buf = append(b.buf, data...)
	b.endMessage(off)
	if flags&netlink.Acknowledge != 0 {
		b.messages++
	}
}

// sendBatch sends a batch to the kernel with one sendmsg and waits for its answers.
func (c *netlinkConn) sendBatch(b *rawBatch) error {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: c.netNSFd})
	if err != nil {
		return fmt.Errorf("opening nftables netlink connection: %w", err)
	}
	defer conn.Close()
	if err := sizeSocket(conn, len(b.buf), b.messages); err != nil {
		return err
	}
	return sendRawBatch(conn, b)
}

// sendRawBatch sends a finished batch on conn with one sendmsg and waits for every
// acknowledgement; the first error the kernel reports is returned.
func sendRawBatch(conn *netlink.Conn, b *rawBatch) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("getting the netlink socket: %w", err)
	}
	batch := b.finish()
	var serr error
	err = raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), batch, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("sending a batch of %d messages (%d bytes): %w", b.messages, len(batch), err)
	}
	for acked := 0; acked < b.messages; {
		msgs, err := conn.Receive()
		if errors.Is(err, unix.ENFILE) { // strerror says "too many open files in system"
			return fmt.Errorf("receiving the acknowledgements of %d messages: a set is full (more elements than its size): %w", b.messages, err)
		}
		if err != nil {
			return fmt.Errorf("receiving the acknowledgements of %d messages: %w", b.messages, err)
		}
		for _, m := range msgs {
			if m.Header.Type == netlink.Error {
				acked++
			}
		}
	}
	return nil
}
