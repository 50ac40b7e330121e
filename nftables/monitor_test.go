package nftables

import (
	"bytes"
	"encoding/binary"
	"flag"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// touch is a notification of a change to our tables (a chain name stands for the change);
// commit ends a generation.
func touch(what string) nftEvent {
	return nftEvent{kind: unix.NFT_MSG_DELCHAIN, fam: unix.NFPROTO_IPV4, object: []byte(what)}
}
func commit(gen uint32) nftEvent {
	return nftEvent{commit: true, gen: gen, proc: "test", pid: 1}
}

// observeAll feeds events and returns the drift found.
func observeAll(d *driftDetector, evs ...nftEvent) []string {
	var found []string
	for _, ev := range evs {
		found = append(found, d.observe(ev)...)
	}
	return found
}

func TestDriftDetector(t *testing.T) {
	type step struct {
		name string
		do   func(d *driftDetector) []string
		// drift is how many foreign changes the step must report.
		drift int
	}
	begin := func(gen uint32) func(d *driftDetector) []string {
		return func(d *driftDetector) []string { d.begin(gen); return nil }
	}
	end := func(gen uint32, ok bool) func(d *driftDetector) []string {
		return func(d *driftDetector) []string { return d.end(gen, ok) }
	}
	events := func(evs ...nftEvent) func(d *driftDetector) []string {
		return func(d *driftDetector) []string { return observeAll(d, evs...) }
	}
	lost := func(gen uint32) func(d *driftDetector) []string {
		return func(d *driftDetector) []string { return d.lost(gen) }
	}
	cases := []struct {
		name  string
		start uint32
		steps []step
	}{
		{"own commit read while in flight", 10, []step{
			{"begin", begin(10), 0}, {"events", events(touch("add element"), commit(11)), 0}, {"end", end(11, true), 0},
		}},
		{"own commit read after its end", 10, []step{
			{"begin", begin(10), 0}, {"end", end(11, true), 0}, {"events", events(touch("delete element"), commit(11)), 0},
			{"next own", begin(11), 0}, {"end", end(12, true), 0}, {"events", events(touch("add chain"), commit(12)), 0},
		}},
		{"foreign change without own commit", 10, []step{
			{"events", events(touch("delete table"), commit(11)), 1},
		}},
		{"foreign commits elsewhere are ignored", 10, []step{
			{"events", events(commit(11), commit(12)), 0},
			{"begin", begin(12), 0}, {"events", events(commit(13), touch("add element"), commit(14)), 0}, {"end", end(14, true), 0},
		}},
		{"second touching generation in one bracket", 10, []step{
			{"begin", begin(10), 0}, {"events", events(touch("add element"), commit(11), touch("delete rule"), commit(12)), 0},
			{"end", end(12, true), 1},
		}},
		{"foreign change just after an own commit, seen in flight", 10, []step{
			{"begin", begin(10), 0}, {"events", events(touch("add element"), commit(11), touch("flush"), commit(12)), 0},
			{"end", end(11, true), 1},
		}},
		{"failed own commit claims nothing", 10, []step{
			{"begin", begin(10), 0}, {"end", end(11, false), 0}, {"events", events(touch("delete table"), commit(11)), 1},
		}},
		{"gap in generations counts as lost", 10, []step{
			{"events", events(commit(13)), 2},
		}},
		{"lost own generation", 10, []step{
			{"begin", begin(10), 0}, {"end", end(11, true), 0}, {"lost", lost(11), 0},
			{"late events already accounted for", events(touch("add element"), commit(11)), 0},
		}},
		{"lost foreign generation", 10, []step{
			{"begin", begin(10), 0}, {"end", end(11, true), 0}, {"lost", lost(12), 1},
		}},
		{"lost generations while own commit in flight", 10, []step{
			{"begin", begin(10), 0}, {"lost", lost(11), 0}, {"end", end(11, true), 0},
		}},
		{"generation ids wrap", ^uint32(0) - 1, []step{
			{"begin", begin(^uint32(0) - 1), 0}, {"events", events(commit(^uint32(0)), touch("add element"), commit(1)), 0},
			{"end", end(1, true), 0}, {"foreign", events(touch("delete table"), commit(2)), 1},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := newDriftDetector(tc.start)
			for _, s := range tc.steps {
				if got := s.do(d); len(got) != s.drift {
					t.Fatalf("step %q: drift %q, want %d foreign changes", s.name, got, s.drift)
				}
			}
			if len(d.brackets) > 0 && !genAfter(d.brackets[len(d.brackets)-1].upTo, d.last) {
				t.Errorf("brackets not pruned: %+v (last %d)", d.brackets, d.last)
			}
		})
	}
}

// notification builds an nftables notification of kind for family fam with string
// attributes (type → value).
func notification(kind uint16, fam byte, attrs map[uint16]string) netlink.Message {
	data := []byte{fam, unix.NFNETLINK_V0, 0, 0}
	types := make([]uint16, 0, len(attrs))
	for typ := range attrs {
		types = append(types, typ)
	}
	slices.Sort(types)
	for _, typ := range types {
		v := append([]byte(attrs[typ]), 0)
		hdr := make([]byte, 4)
		binary.NativeEndian.PutUint16(hdr[0:2], uint16(4+len(v)))
		binary.NativeEndian.PutUint16(hdr[2:4], typ)
		data = append(data, hdr...)
		data = append(data, v...)
		for len(data)%4 != 0 {
			data = append(data, 0)
		}
	}
	return netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | int(kind))}, Data: data}
}

func TestParseNotification(t *testing.T) {
	p, err := NewWithConn(Config{Families: []v1.IPFamily{v1.IPv4Protocol}}, NewFake())
	if err != nil {
		t.Fatal(err)
	}
	m := &driftMonitor{p: p, families: map[byte]bool{unix.NFPROTO_IPV4: true}, dynamicSets: map[string]bool{"vip-affinity": true}}
	gen := notification(unix.NFT_MSG_NEWGEN, unix.AF_UNSPEC, map[uint16]string{unix.NFTA_GEN_PROC_NAME: "nft"})
	id := make([]byte, 8)
	binary.NativeEndian.PutUint16(id[0:2], 8)
	binary.NativeEndian.PutUint16(id[2:4], unix.NFTA_GEN_ID)
	binary.BigEndian.PutUint32(id[4:8], 42)
	gen.Data = append(gen.Data, id...)
	cases := []struct {
		name string
		msg  netlink.Message
		ok   bool
		want string
	}{
		{"table deleted", notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, map[uint16]string{unix.NFTA_TABLE_NAME: TableName}), true, "delete table ip nodeproxy"},
		{"rule deleted", notification(unix.NFT_MSG_DELRULE, unix.NFPROTO_IPV4, map[uint16]string{unix.NFTA_RULE_TABLE: TableName, unix.NFTA_RULE_CHAIN: "services"}), true, "delete rule ip nodeproxy services"},
		{"element deleted", notification(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_IPV4, map[uint16]string{unix.NFTA_SET_ELEM_LIST_TABLE: TableName, unix.NFTA_SET_ELEM_LIST_SET: "service-ips"}), true, "delete element ip nodeproxy service-ips"},
		{"affinity element", notification(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_IPV4, map[uint16]string{unix.NFTA_SET_ELEM_LIST_TABLE: TableName, unix.NFTA_SET_ELEM_LIST_SET: "vip-affinity"}), false, ""},
		{"other table", notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, map[uint16]string{unix.NFTA_TABLE_NAME: "filter"}), false, ""},
		{"other family", notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV6, map[uint16]string{unix.NFTA_TABLE_NAME: TableName}), false, ""},
		{"malformed", netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELTABLE)}, Data: []byte{2, 0, 0, 0, 200, 0, 1}}, false, ""},
	}
	for _, tc := range cases {
		ev, ok := m.parse(tc.msg)
		got := ""
		if ok {
			got = ev.describe()
		}
		if ok != tc.ok || got != tc.want || ev.commit {
			t.Errorf("%s: parse = %+v, %t; want what %q, %t", tc.name, ev, ok, tc.want, tc.ok)
		}
	}
	ev, ok := m.parse(gen)
	if !ok || !ev.commit || ev.gen != 42 || ev.proc != "nft" {
		t.Errorf("NEWGEN: parse = %+v, %t; want commit of generation 42 by nft", ev, ok)
	}
	if !strings.HasPrefix(familyKeyword(unix.NFPROTO_IPV6), "ip6") {
		t.Errorf("familyKeyword(ipv6) = %q", familyKeyword(unix.NFPROTO_IPV6))
	}
}

// lockedBuffer is a log destination safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestFailedTransactionLogged checks that a failed transaction is logged at V(4), its first
// failedTransactionLines lines only.
func TestFailedTransactionLogged(t *testing.T) {
	var fs flag.FlagSet
	klog.InitFlags(&fs)
	out := &lockedBuffer{}
	klog.LogToStderr(false)
	klog.SetOutput(out)
	if err := fs.Set("v", "4"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = fs.Set("v", "0")
		klog.LogToStderr(true)
		klog.SetOutput(os.Stderr)
	}()
	env := newTestEnv(t, testConfig())
	manyServices(env, 300)
	env.p.conn = failingConn{}
	if err := env.trySync(true); err == nil {
		t.Fatal("sync over a failing connection succeeded")
	}
	klog.Flush()
	logged := out.String()
	for _, want := range []string{"Failed nftables transaction", "add table ip nodeproxy", "shownLines=200"} {
		if !strings.Contains(logged, want) {
			t.Errorf("the log of the failed transaction lacks %q:\n%.2000s", want, logged)
		}
	}
}
