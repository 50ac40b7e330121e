package nftables

import (
	"bytes"
	"encoding/binary"
	"testing"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
)

// gnftMessages returns the messages google/nftables sends to add elems to spec's set.
func gnftMessages(t *testing.T, fam *family, spec *setSpec, elems []element) []netlink.Message {
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
		gels[i] = gnftElement(spec, e, false)
	}
	if err := conn.SetAddElements(gnftSet(fam, table, spec), gels); err != nil {
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
// plain sets, an interval set, with and without comments), the batch elementBatch encodes is
// the one google/nftables sends, message by message and byte by byte (sequence numbers aside).
func TestElementBatchEncodesAsGoogleNFTables(t *testing.T) {
	sets := 0
	for _, o := range creationTx(t).expanded().ops {
		if o.kind != opAddElements {
			continue
		}
		sets++
		want := gnftMessages(t, o.fam, o.set, o.elems)
		b := newElementBatch(0)
		b.addElements(o.fam, TableName, o.set, o.elems)
		got := parseBatch(t, b.finish())
		if len(got) != len(want) {
			t.Fatalf("set %s: %d messages, google/nftables sends %d", o.set.name, len(got), len(want))
		}
		for i := range got {
			g, w := got[i].Header, want[i].Header
			if g.Type != w.Type || g.Flags != w.Flags || !bytes.Equal(got[i].Data, want[i].Data) {
				t.Errorf("set %s, message %d: type %#x flags %v data\n%x\nwant type %#x flags %v data\n%x",
					o.set.name, i, g.Type, g.Flags, got[i].Data, w.Type, w.Flags, want[i].Data)
			}
		}
	}
	if sets < 5 {
		t.Errorf("only %d sets compared", sets)
	}
}
