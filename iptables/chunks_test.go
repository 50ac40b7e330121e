package iptables

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// setChunkChains makes syncs split at n per-port chains for the rest of the test.
func setChunkChains(t *testing.T, n int) {
	t.Helper()
	old := chunkChains
	chunkChains = n
	t.Cleanup(func() { chunkChains = old })
}

// restoreShape is what one iptables-restore input declares and does.
type restoreShape struct {
	portChains []string // per-port chains declared (":KUBE-SVC-…"), in order
	topChains  []string // other chains declared
	removals   []string // "-X" chains
	filter     bool     // has a filter section
}

// shapeOf parses a restore input.
func shapeOf(data string) restoreShape {
	var s restoreShape
	for _, l := range lines(data) {
		switch {
		case l == "*filter":
			s.filter = true
		case strings.HasPrefix(l, ":"):
			name := strings.Fields(l[1:])[0]
			if isServiceChain(name) {
				s.portChains = append(s.portChains, name)
			} else {
				s.topChains = append(s.topChains, name)
			}
		case strings.HasPrefix(l, "-X "):
			s.removals = append(s.removals, strings.TrimPrefix(l, "-X "))
		}
	}
	return s
}

// checkChunks checks that every restore but the last is a chunk: per-port chains only (and
// KUBE-MARK-MASQ, which they jump to), at most max of them unless one port has more, each
// port's chains (ports: chain → its port's chains) all in one chunk; and that the last one
// holds the top-level chains and no per-port chain but stale ones it deletes.
func checkChunks(t *testing.T, restores []string, max int, ports map[string][]string) {
	t.Helper()
	for i, data := range restores[:len(restores)-1] {
		s := shapeOf(data)
		if s.filter || len(s.removals) > 0 || !slices.Equal(s.topChains, []string{ChainMarkMasq}) {
			t.Errorf("chunk %d is not per-port chains only (filter %t, -X %q, top %q)", i, s.filter, s.removals, s.topChains)
		}
		if len(s.portChains) > max && len(s.portChains) != len(ports[s.portChains[0]]) {
			t.Errorf("chunk %d declares %d per-port chains, more than %d", i, len(s.portChains), max)
		}
		for _, c := range s.portChains {
			for _, sibling := range ports[c] {
				if !slices.Contains(s.portChains, sibling) {
					t.Errorf("chunk %d writes %s but not %s of the same port", i, c, sibling)
				}
			}
		}
		for _, c := range s.portChains {
			if n := strings.Count(data, "-A "+c+" "); n == 0 {
				t.Errorf("chunk %d declares %s without filling it", i, c)
			}
		}
	}
	final := shapeOf(restores[len(restores)-1])
	for _, c := range final.portChains {
		if !slices.Contains(final.removals, c) {
			t.Errorf("the final restore writes per-port chain %s (not a deletion)", c)
		}
	}
	for _, c := range []string{ChainServices, ChainNodePorts, ChainHairpin, ChainPostrouting} {
		if !slices.Contains(final.topChains, c) {
			t.Errorf("the final restore does not write %s", c)
		}
	}
}

// portChainSets maps every chain in the fake's nat table to the chains of its port, using the
// ports' comments in KUBE-SERVICES and KUBE-NODEPORTS to group them by name hash.
func portChainSets(t *testing.T, fake *Fake) map[string][]string {
	t.Helper()
	byHash := map[string][]string{}
	for _, c := range mustChains(t, fake, tableNAT) {
		if isServiceChain(c) {
			h := c[strings.LastIndex(c, "-")+1:]
			byHash[h] = append(byHash[h], c)
		}
	}
	out := map[string][]string{}
	for _, set := range byHash {
		for _, c := range set {
			out[c] = set
		}
	}
	return out
}

func TestChunkedFullSync(t *testing.T) {
	w := newWorld(t, Config{Detectors: podCIDR4})
	fake := w.fakes[v1.IPv4Protocol]
	mustRestore(t, fake, "*nat\n:KUBE-SVC-STALE - [0:0]\n:KUBE-SEP-STALE - [0:0]\n-A KUBE-SVC-STALE -j KUBE-SEP-STALE\nCOMMIT\n")
	before := len(fake.Restores())
	manyServices(w, 2500)
	w.mustSync(true)
	restores := fake.Restores()[before:]
	if len(restores) != 4 {
		t.Fatalf("a full sync of 2,500 service ports ran %d restores, want 3 chunks + 1 final", len(restores))
	}
	for i, want := range []int{1000, 1000, 500} {
		if got := len(shapeOf(restores[i]).portChains); got != want {
			t.Errorf("chunk %d declares %d per-port chains, want %d", i, got, want)
		}
	}
	checkChunks(t, restores, restoreChunkChains, portChainSets(t, fake))
	final := shapeOf(restores[3])
	if !final.filter || !slices.Contains(final.removals, "KUBE-SEP-STALE") || !slices.Contains(final.removals, "KUBE-SVC-STALE") {
		t.Errorf("the final restore lacks the filter section or the -X of the stale chains (filter %t, -X %q)", final.filter, final.removals)
	}
	equivalentToFull(t, w)
}

// mixedServices adds n Services of kinds with one to three per-port chains.
func mixedServices(w *world, n int, epSuffix string) {
	for i := range n {
		name := fmt.Sprintf("mix-%d", i)
		w.addService(svc("ns", name, fmt.Sprintf("172.30.1.%d", i+1), func(s *v1.Service) {
			switch i % 3 {
			case 1: // EXT + SVC
				s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, int32(30000+i)
			case 2: // EXT + SVC + SVL
				s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, int32(30000+i)
				s.Spec.ExternalTrafficPolicy, s.Spec.HealthCheckNodePort = v1.ServiceExternalTrafficPolicyLocal, int32(32000+i)
			}
		}))
		w.addSlice(slice("ns", name, fmt.Sprintf("10.2.1.%d", i+1), fmt.Sprintf("local:10.3.1.%d%s", i+1, epSuffix)))
	}
}

func TestChunkedSyncsKeepPortsWhole(t *testing.T) {
	setChunkChains(t, 4)
	w := newWorld(t, Config{Detectors: podCIDR4})
	fake := w.fakes[v1.IPv4Protocol]
	mixedServices(w, 12, "")
	w.mustSync(true)
	restores := fake.Restores()
	if len(restores) < 6 { // 24 per-port chains, at most 4 per chunk
		t.Fatalf("a full sync of 24 per-port chains ran %d restores, want at least 6 chunks + 1 final", len(restores))
	}
	checkChunks(t, restores, 4, portChainSets(t, fake))
	equivalentToFull(t, w)

	// A partial sync changing every port is split too; one changing a single port is not.
	before := len(fake.Restores())
	mixedServices(w, 12, "0")
	w.mustSync(false)
	restores = fake.Restores()[before:]
	if len(restores) < 2 {
		t.Fatalf("a partial sync rewriting every port ran %d restores, want chunks + final", len(restores))
	}
	sets := portChainSets(t, fake)
	for i, data := range restores[:len(restores)-1] {
		if strings.Contains(data, "-D ") || strings.Contains(data, "-I ") {
			t.Errorf("partial chunk %d changes top-level rules:\n%s", i, data)
		}
	}
	checkPartialChunks(t, restores, sets)
	equivalentToFull(t, w)

	before = len(fake.Restores())
	w.addSlice(slice("ns", "mix-2", "10.2.1.3"))
	w.mustSync(false)
	if n := len(fake.Restores()) - before; n != 1 {
		t.Errorf("a partial sync of one port ran %d restores, want 1", n)
	}
	equivalentToFull(t, w)
}

// checkPartialChunks checks the chunks of a partial sync: per-port chains only, whole ports
// (of the chains the sync rewrites: unchanged chains are not written).
func checkPartialChunks(t *testing.T, restores []string, sets map[string][]string) {
	t.Helper()
	seen := map[string]int{}
	for i, data := range restores[:len(restores)-1] {
		s := shapeOf(data)
		if len(s.portChains) > 4 || len(s.removals) > 0 || s.filter {
			t.Errorf("partial chunk %d: %d per-port chains, -X %q, filter %t", i, len(s.portChains), s.removals, s.filter)
		}
		for _, c := range s.portChains {
			seen[c] = i
		}
	}
	for c, i := range seen {
		for _, sibling := range sets[c] {
			if j, ok := seen[sibling]; ok && j != i {
				t.Errorf("chains %s and %s of one port are in chunks %d and %d", c, sibling, i, j)
			}
		}
	}
}

// upstreamShape returns upstream kube-proxy's rules for a ClusterIP port ns/name:p80 on
// clusterIP with one endpoint (at 8080): KUBE-SERVICES → KUBE-SVC → KUBE-SEP → DNAT.
func upstreamShape(name, clusterIP, endpointIP string) string {
	portName := "ns/" + name + ":p80"
	svcChain := chainsFor(portName, "tcp").cluster
	sep := endpointChain(portName, "tcp", endpointIP+":8080")
	return strings.Join([]string{
		":" + svcChain + " - [0:0]",
		":" + sep + " - [0:0]",
		fmt.Sprintf(`-A KUBE-SERVICES -m comment --comment "%s cluster IP" -m tcp -p tcp -d %s --dport 80 -j %s`, portName, clusterIP, svcChain),
		fmt.Sprintf(`-A %s -m comment --comment "%s -> %s:8080" -j %s`, svcChain, portName, endpointIP, sep),
		fmt.Sprintf(`-A %s -m comment --comment %s -s %s -j KUBE-MARK-MASQ`, sep, portName, endpointIP),
		fmt.Sprintf(`-A %s -m comment --comment %s -m tcp -p tcp -j DNAT --to-destination %s:8080`, sep, portName, endpointIP),
	}, "\n")
}

// upstreamRuleset returns an iptables-restore input of upstream kube-proxy's nat rules for
// the given ports (upstreamShape outputs), with the jump from PREROUTING.
func upstreamRuleset(ports ...string) string {
	return "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n" +
		strings.Join(ports, "\n") + "\n-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000\n" +
		"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n"
}

// seedUpstream writes an upstream kube-proxy ruleset with the Services ns/old and ns/gone
// into fake, as if upstream had been running before.
func seedUpstream(t *testing.T, fake *Fake) {
	t.Helper()
	mustRestore(t, fake, upstreamRuleset(upstreamShape("old", "172.30.0.1", "10.1.0.1"), upstreamShape("gone", "172.30.0.2", "10.1.0.2")))
}

func TestChunkedTakeoverOfUpstreamHasNoWindow(t *testing.T) {
	setChunkChains(t, 2)
	w := newWorld(t, Config{Detectors: podCIDR4})
	fake := w.fakes[v1.IPv4Protocol]
	seedUpstream(t, fake)
	before := len(fake.Restores())
	w.addService(svc("ns", "old", "172.30.0.1", nil))
	w.addSlice(slice("ns", "old", "10.1.0.1"))
	mixedServices(w, 6, "")
	w.mustSync(true)
	restores := fake.Restores()[before:]
	if len(restores) < 3 {
		t.Fatalf("%d restores, want chunks + final", len(restores))
	}

	// Replay the sync restore by restore: ns/old (rewritten in place by a chunk) and ns/gone
	// (deleted) work until the final restore, and ns/old after it.
	replay := NewFake(v1.IPv4Protocol)
	seedUpstream(t, replay)
	for i, data := range restores {
		mustRestore(t, replay, data)
		if got := traceFrom(t, replay, "10.9.0.9", "172.30.0.1"); len(got) != 1 || !hasKey(got, "10.1.0.1:8080") {
			t.Errorf("after restore %d of %d, ns/old reaches %v, want 10.1.0.1:8080", i+1, len(restores), got)
		}
		if i < len(restores)-1 {
			if got := traceFrom(t, replay, "10.9.0.9", "172.30.0.2"); !hasKey(got, "10.1.0.2:8080") {
				t.Errorf("after chunk %d, the old Service ns/gone reaches %v before the final restore", i+1, got)
			}
		}
	}
	for _, c := range mustChains(t, fake, tableNAT) {
		if strings.HasPrefix(c, prefixEndpoint) {
			t.Errorf("upstream's chain %s survived the full sync", c)
		}
	}
	if strings.Contains(strings.Join(fake.Rules(tableNAT, ChainServices), "\n"), "ns/gone") {
		t.Errorf("ns/gone is still in KUBE-SERVICES")
	}
}

// hasKey reports whether m has key k.
func hasKey(m map[string]bool, k string) bool {
	_, ok := m[k]
	return ok
}
