package nftables

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// gnftMessages returns the messages google/nftables sends to add (del: delete) elems in
// spec's set.
func gnftMessages(t *testing.T, fam *family, spec *setSpec, elems []element, del bool) []netlink.Message {
	t.Helper()
	var sent []netlink.Message
	conn, err := gnft.New(gnft.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		sent = append(sent, req...)
		var acks []netlink.Message
		for _, m := range req {
			if m.Header.Flags&netlink.Acknowledge != 0 {
				acks = append(acks, netlink.Message{Header: netlink.Header{Type: netlink.Error, Sequence: m.Header.Sequence}, Data: make([]byte, 4)})
			}
		}
		return acks, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	table := fam.tableRef(TableName)
	gels := make([]gnft.SetElement, len(elems))
	for i, e := range elems {
		gels[i] = gnftElement(spec, e, del)
	}
	set := gnftSet(fam, table, spec)
	if del {
		err = conn.SetDeleteElements(set, gels)
	} else {
		err = conn.SetAddElements(set, gels)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	return sent
}

// parseBatch splits an encoded batch into its messages.
func parseBatch(t *testing.T, b []byte) []netlink.Message {
	t.Helper()
	var out []netlink.Message
	for len(b) > 0 {
		var m netlink.Message
		if len(b) < 4 || int(binary.NativeEndian.Uint32(b)) > len(b) {
			t.Fatalf("message %d of the batch: truncated", len(out))
		}
		if err := m.UnmarshalBinary(b[:binary.NativeEndian.Uint32(b)]); err != nil {
			t.Fatalf("message %d of the batch: %v", len(out), err)
		}
		out = append(out, m)
		b = b[nlmsgAlign(int(m.Header.Length)):]
	}
	return out
}

func nlmsgAlign(n int) int { return (n + 3) &^ 3 }

// TestElementBatchEncodesAsGoogleNFTables: for every set of a table (verdict maps, value maps,
// plain sets, an interval set, with and without comments), the batch rawBatch encodes to
// add or delete its elements is the one google/nftables sends, message by message and byte
// by byte (sequence numbers aside).
func TestElementBatchEncodesAsGoogleNFTables(t *testing.T) {
	sets := 0
	for _, o := range creationTx(t).expanded().ops {
		if o.kind != opAddElements {
			continue
		}
		sets++
		for _, del := range []bool{false, true} {
			want := gnftMessages(t, o.fam, o.set, o.elems, del)
			b := newRawBatch(0)
			b.setElements(o.fam, TableName, o.set, o.elems, del)
			compareMessages(t, fmt.Sprintf("set %s (delete %t)", o.set.name, del), parseBatch(t, b.finish()), want)
		}
	}
	if sets < 5 {
		t.Errorf("only %d sets compared", sets)
	}
}

// TestEncodedTransactionHoldsGoogleNFTablesMessages: a whole table creation encodes as
// google/nftables would send it, its element messages included, in the transaction's order.
// google/nftables numbers new sets from a counter of its own, so messages that carry set ids
// (sets, rules) are compared by type, flags and length; element messages byte by byte.
func TestEncodedTransactionHoldsGoogleNFTablesMessages(t *testing.T) {
	tx := creationTx(t).expanded()
	b, err := encodeTransaction(tx)
	if err != nil {
		t.Fatal(err)
	}
	var want []netlink.Message
	conn, err := gnft.New(gnft.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		want = append(want, req...)
		return []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	q := &batcher{conn: conn, sets: map[setKey]*gnft.Set{}}
	for _, o := range tx.ops {
		if o.kind == opAddElements {
			gels := make([]gnft.SetElement, len(o.elems))
			for i, e := range o.elems {
				gels[i] = gnftElement(o.set, e, false)
			}
			set := q.sets[setKey{fam: o.fam, table: o.table, name: o.set.name}]
			noID := *set
			noID.ID = 0 // rawBatch names the set only; the kernel finds it by name
			if err := conn.SetAddElements(&noID, gels); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := q.queue(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	got := parseBatch(t, b.finish())
	if len(got) != len(want) {
		t.Fatalf("%d messages, google/nftables sends %d", len(got), len(want))
	}
	newSetElem := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)
	elements := 0
	for i := range got {
		g, w := got[i], want[i]
		same := g.Header.Type == w.Header.Type && g.Header.Flags == w.Header.Flags && len(g.Data) == len(w.Data)
		if g.Header.Type == newSetElem {
			elements++
			same = same && bytes.Equal(g.Data, w.Data)
		}
		if !same {
			t.Errorf("message %d: type %#x flags %v %d bytes, want type %#x flags %v %d bytes (or other element bytes)",
				i, g.Header.Type, g.Header.Flags, len(g.Data), w.Header.Type, w.Header.Flags, len(w.Data))
		}
	}
	if elements == 0 {
		t.Error("no element message compared")
	}
}

// compareMessages compares messages' types, flags and data.
func compareMessages(t *testing.T, what string, got, want []netlink.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d messages, google/nftables sends %d", what, len(got), len(want))
	}
	for i := range got {
		g, w := got[i].Header, want[i].Header
		if g.Type != w.Type || g.Flags != w.Flags || !bytes.Equal(got[i].Data, want[i].Data) {
			t.Errorf("%s, message %d: type %#x flags %v data\n%x\nwant type %#x flags %v data\n%x",
				what, i, g.Type, g.Flags, got[i].Data, w.Type, w.Flags, want[i].Data)
		}
	}
}

// gnftElement converts an element; a deletion only needs the key.
func gnftElement(spec *setSpec, e element, del bool) gnft.SetElement {
	out := gnft.SetElement{Key: []byte(e.key)}
	if spec.interval {
		out.KeyEnd = []byte(e.keyEnd)
	}
	if del {
		return out
	}
	out.Comment = e.comment
	switch {
	case spec.verdictMap:
		out.VerdictData = &expr.Verdict{Kind: verdictKinds[e.verd.kind], Chain: e.verd.chain}
	case spec.data != nil:
		out.Val = []byte(e.value)
	}
	return out
}
