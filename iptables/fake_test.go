package iptables

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestSplitJoinArgs(t *testing.T) {
	cases := map[string][]string{
		`-A X -m comment --comment "a b" -j Y`: {"-A", "X", "-m", "comment", "--comment", "a b", "-j", "Y"},
		`-m comment --comment 'single q'`:      {"-m", "comment", "--comment", "single q"},
		`--comment "with \"quote\""`:           {"--comment", `with "quote"`},
		`  spaced    out  `:                    {"spaced", "out"},
		`--comment ""`:                         {"--comment", ""},
	}
	for in, want := range cases {
		got, err := splitArgs(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("splitArgs(%q) = %q, %v; want %q", in, got, err, want)
		}
		again, err := splitArgs(joinArgs(got))
		if err != nil || !slices.Equal(again, want) {
			t.Errorf("splitArgs(joinArgs(%q)) = %q, %v", got, again, err)
		}
	}
	if _, err := splitArgs(`-m comment --comment "open`); err == nil {
		t.Errorf("unterminated quote accepted")
	}
}

func mustRestore(t *testing.T, f *Fake, data string) {
	t.Helper()
	if err := f.Restore(context.Background(), []byte(data)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
}

func TestFakeRestoreNoflushSemantics(t *testing.T) {
	f := NewFake(v1.IPv4Protocol)
	mustRestore(t, f, `*nat
:KUBE-A - [0:0]
:KUBE-B - [0:0]
-A KUBE-A -m comment --comment "first rule" -j KUBE-B
-A KUBE-B -j RETURN
-A PREROUTING -j KUBE-A
COMMIT
`)
	// A chain line flushes that chain only; -I inserts at the top; -D deletes by spec.
	mustRestore(t, f, `*nat
:KUBE-B - [0:0]
-I KUBE-A -j RETURN
-D KUBE-A -m comment --comment "first rule" -j KUBE-B
-A KUBE-B -j MARK --or-mark 0x4000
COMMIT
`)
	want := `*nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:KUBE-A -
:KUBE-B -
-A PREROUTING -j KUBE-A
-A KUBE-A -j RETURN
-A KUBE-B -j MARK --or-mark 0x4000
COMMIT
`
	if got := sectionOf(f.Dump(), "nat"); got != want {
		t.Errorf("nat after restores:\n%s\nwant:\n%s", got, want)
	}
	mustRestore(t, f, "*nat\n:KUBE-B - [0:0]\n-X KUBE-B\nCOMMIT\n")
	if slices.Contains(mustChains(t, f, "nat"), "KUBE-B") {
		t.Errorf("KUBE-B survived -X")
	}
}

func TestFakeRestoreErrorsAreAtomic(t *testing.T) {
	f := NewFake(v1.IPv4Protocol)
	mustRestore(t, f, "*nat\n:KUBE-A - [0:0]\n-A PREROUTING -j KUBE-A\nCOMMIT\n")
	before := f.Dump()
	bad := []string{
		"*nat\n:KUBE-C - [0:0]\n-X KUBE-A\nCOMMIT\n",                      // referenced
		"*nat\n-A KUBE-A -j KUBE-NOPE\nCOMMIT\n",                          // unknown target
		"*nat\n-D PREROUTING -j RETURN\nCOMMIT\n",                         // no such rule
		"*nat\n-A KUBE-NOPE -j RETURN\nCOMMIT\n",                          // no such chain
		"*nat\n:KUBE-C - [0:0]\n",                                         // no COMMIT
		"*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j RETURN\n-X KUBE-A\nCOMMIT\n", // not empty
	}
	for _, data := range bad {
		if err := f.Restore(context.Background(), []byte(data)); err == nil {
			t.Errorf("Restore(%q) succeeded", data)
		}
		if got := f.Dump(); got != before {
			t.Errorf("failed Restore(%q) changed the state:\n%s", data, got)
		}
	}
	f.FailNextRestore(errors.New("injected"))
	if err := f.Restore(context.Background(), []byte("*nat\nCOMMIT\n")); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Errorf("FailNextRestore: got %v", err)
	}
	if n := len(f.Restores()); n != len(bad)+2 {
		t.Errorf("Restores() has %d inputs, want %d", n, len(bad)+2)
	}
}

func TestFakeSingleCommands(t *testing.T) {
	f := NewFake(v1.IPv4Protocol)
	if err := f.EnsureRule("filter", "INPUT", "-j", "KUBE-NOPE"); err == nil {
		t.Errorf("EnsureRule to a missing chain succeeded")
	}
	if err := f.EnsureChain("filter", "KUBE-X"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := f.EnsureRule("filter", "INPUT", "-m", "comment", "--comment", "a b", "-j", "KUBE-X"); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.Rules("filter", "INPUT"); len(got) != 1 || got[0] != `-m comment --comment "a b" -j KUBE-X` {
		t.Errorf("INPUT rules = %q", got)
	}
	if ok, _ := f.RuleExists("filter", "INPUT", "-m", "comment", "--comment", "a b", "-j", "KUBE-X"); !ok {
		t.Errorf("RuleExists = false")
	}
	if err := f.DeleteChain("filter", "KUBE-X"); err == nil {
		t.Errorf("DeleteChain of a referenced chain succeeded")
	}
	if err := f.DeleteRule("filter", "INPUT", "-m", "comment", "--comment", "a b", "-j", "KUBE-X"); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteChain("filter", "KUBE-X"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.RuleExists("filter", "KUBE-X", "-j", "RETURN"); ok {
		t.Errorf("RuleExists true in a deleted chain")
	}
}

// sectionOf returns one table's section of a Dump.
func sectionOf(dump, table string) string {
	start := strings.Index(dump, "*"+table+"\n")
	if start < 0 {
		return ""
	}
	end := strings.Index(dump[start:], "COMMIT\n")
	return dump[start : start+end+len("COMMIT\n")]
}

func mustChains(t *testing.T, f *Fake, table string) []string {
	t.Helper()
	names, err := f.ChainNames(context.Background(), table)
	if err != nil {
		t.Fatal(err)
	}
	return names
}
