package iptables

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// traceFrom traces a new TCP connection from a pod at src to dst:80 over fake and returns the
// masquerade decision of each endpoint the connection may be DNATed to.
func traceFrom(t *testing.T, fake *Fake, src, dst string) map[string]bool {
	t.Helper()
	tr := &tracer{fake: fake}
	p := tracePkt{src: netip.MustParseAddr(src), dst: netip.MustParseAddr(dst), proto: "tcp", dport: 80}
	masq := map[string]bool{}
	for _, o := range tr.paths(p, false) {
		if o.dnat == "" {
			t.Errorf("%s → %s: a path is not DNATed (verdict %q)", src, dst, o.verdict)
			continue
		}
		masq[o.dnat] = o.masq
	}
	if len(tr.errs) > 0 {
		t.Fatalf("tracer errors: %s", strings.Join(tr.errs, "; "))
	}
	return masq
}

func TestHairpinMasqueradesOnlyAnEndpointReachingItself(t *testing.T) {
	w := newWorld(t, Config{Detectors: podCIDR4})
	w.addService(svc("ns", "hp", "172.30.0.9", nil))
	w.addSlice(slice("ns", "hp", "local:10.1.0.1", "local:10.1.0.2", "10.2.0.3"))
	w.mustSync(true)
	fake := w.fakes[v1.IPv4Protocol]

	// Only the node-local endpoints get a hairpin rule; remote ones cannot hairpin here.
	hairpin := fake.Rules(tableNAT, ChainHairpin)
	if len(hairpin) != 2 || strings.Contains(strings.Join(hairpin, "\n"), "10.2.0.3") {
		t.Errorf("KUBE-HAIRPIN = %q, want one rule for each of 10.1.0.1 and 10.1.0.2", hairpin)
	}
	want := map[string]bool{"10.1.0.1:8080": true, "10.1.0.2:8080": false, "10.2.0.3:8080": false}
	got := traceFrom(t, fake, "10.1.0.1", "172.30.0.9")
	if len(got) != len(want) {
		t.Errorf("endpoints reached from 10.1.0.1: %v, want %v", got, want)
	}
	for ep, masq := range want {
		if g, ok := got[ep]; !ok || g != masq {
			t.Errorf("10.1.0.1 → ClusterIP → %s: masquerade = %t (reached: %t), want %t", ep, g, ok, masq)
		}
	}
	for ep, masq := range traceFrom(t, fake, "10.1.0.9", "172.30.0.9") {
		if masq {
			t.Errorf("another pod (10.1.0.9) → ClusterIP → %s is masqueraded", ep)
		}
	}

	// The endpoint moves to another node: its hairpin rule goes with a partial sync.
	w.addSlice(slice("ns", "hp", "10.1.0.1", "local:10.1.0.2", "10.2.0.3"))
	w.mustSync(false)
	if got := traceFrom(t, fake, "10.1.0.1", "172.30.0.9"); got["10.1.0.1:8080"] {
		t.Errorf("a remote endpoint's connection to itself is masqueraded after it moved: %v", got)
	}
	if hairpin := fake.Rules(tableNAT, ChainHairpin); len(hairpin) != 1 || !strings.Contains(hairpin[0], "10.1.0.2") {
		t.Errorf("KUBE-HAIRPIN after the move = %q, want only 10.1.0.2's rule", hairpin)
	}
	equivalentToFull(t, w)
}

func TestHairpinRulesOfPortsSharingAnEndpoint(t *testing.T) {
	w := newWorld(t, Config{Detectors: podCIDR4})
	for _, name := range []string{"one", "two"} {
		w.addService(svc("ns", name, map[string]string{"one": "172.30.0.1", "two": "172.30.0.2"}[name], nil))
		w.addSlice(slice("ns", name, "local:10.1.0.1"))
	}
	w.mustSync(true)
	fake := w.fakes[v1.IPv4Protocol]
	if got := fake.Rules(tableNAT, ChainHairpin); len(got) != 2 {
		t.Fatalf("KUBE-HAIRPIN = %q, want one rule per service port", got)
	}
	w.deleteService(svc("ns", "one", "172.30.0.1", nil))
	w.mustSync(false)
	got := fake.Rules(tableNAT, ChainHairpin)
	if len(got) != 1 || !strings.Contains(got[0], "ns/two:p80") {
		t.Errorf("KUBE-HAIRPIN after deleting ns/one = %q, want ns/two's rule only", got)
	}
	if masq := traceFrom(t, fake, "10.1.0.1", "172.30.0.2"); !masq["10.1.0.1:8080"] {
		t.Errorf("hairpin through ns/two is not masqueraded after ns/one went: %v", masq)
	}
}
