package nftables

import (
	"errors"
	"strings"
	"testing"
)

// TestFakeDump shows the canonical dump of a one-Service state.
func TestFakeDump(t *testing.T) {
	env := newTestEnv(t, testConfig())
	env.add(makeService("a", "172.30.0.1"), makeSlice("a", ep{ip: "10.0.2.1"}))
	env.sync(true)
	dump := env.fake.Dump()
	for _, want := range []string{
		"add table ip nodeproxy\n",
		"add map ip nodeproxy vip-endpoints { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service ; comment \"frontend . slot : endpoint\" ; }\n",
		"add chain ip nodeproxy dnat-vip-1\n",
		"add rule ip nodeproxy dnat-vip-1 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @vip-endpoints\n",
		"add chain ip nodeproxy nat-prerouting { type nat hook prerouting priority -100 ; }\n",
		"add element ip nodeproxy service-ips { 172.30.0.1 . tcp . 80 comment \"ns/a:p80\" : goto dnat-vip-1 }\n",
		"add element ip nodeproxy vip-endpoints { 172.30.0.1 . tcp . 80 . 0 : 10.0.2.1 . 8080 }\n",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("Dump lacks %q:\n%s", want, dump)
		}
	}
	if env.fake.Dump() != dump {
		t.Error("Dump is not deterministic")
	}
}

// TestFakeRefusesWhatTheKernelRefuses: references to missing objects, duplicates, chains in
// use; and a failed transaction changes nothing.
func TestFakeRefusesWhatTheKernelRefuses(t *testing.T) {
	env := newTestEnv(t, testConfig())
	env.add(makeService("a", "172.30.0.1"), makeSlice("a", ep{ip: "10.0.2.1"}))
	env.sync(true)
	before := env.fake.Dump()
	fam := familyIPv4
	svcIPs := fam.setIndex[mapServiceIPs]
	tests := []struct {
		name string
		ops  []op
		want error
	}{
		{"chain in use", []op{{kind: opDeleteChain, fam: fam, table: TableName, chain: &chain{name: "dnat-vip-1"}}}, ErrBusy},
		{"missing chain", []op{{kind: opDeleteChain, fam: fam, table: TableName, chain: &chain{name: "nope"}}}, ErrNotFound},
		{"duplicate element", []op{{kind: opAddElements, fam: fam, table: TableName, set: svcIPs,
			elems: []element{{key: keyBuf{}.addr(mustAddr("172.30.0.1")).proto(6).port(80).String(), verd: verdictDropV}}}}, ErrExists},
		{"verdict to a missing chain", []op{{kind: opAddElements, fam: fam, table: TableName, set: svcIPs,
			elems: []element{{key: keyBuf{}.addr(mustAddr("172.30.0.9")).proto(6).port(80).String(), verd: goTo("nope")}}}}, ErrInvalid},
		{"rule referring to a missing set", []op{{kind: opAddChain, fam: fam, table: TableName,
			chain: &chain{name: "x", rules: []rule{r(setMatch{key: []keyField{kDaddr}, set: "nope"})}}}}, ErrInvalid},
		{"missing table", []op{{kind: opDeleteTable, fam: familyIPv6, table: TableName}}, ErrNotFound},
		{"a good operation then a bad one", []op{
			{kind: opAddChain, fam: fam, table: TableName, chain: &chain{name: "fine"}},
			{kind: opDeleteChain, fam: fam, table: TableName, chain: &chain{name: "nope"}},
		}, ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := env.fake.Apply(&Transaction{ops: tc.ops})
			if !errors.Is(err, tc.want) {
				t.Errorf("Apply: %v, want %v", err, tc.want)
			}
			if env.fake.Dump() != before {
				t.Error("a failed transaction changed the state")
			}
		})
	}
}
