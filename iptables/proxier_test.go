package iptables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// podCIDR4 is the ClusterCIDR detector of the Proxier tests.
var podCIDR4 = map[v1.IPFamily]proxier.LocalDetector{
	v1.IPv4Protocol: {Mode: proxier.LocalModeClusterCIDR, CIDR: netip.MustParsePrefix("10.0.0.0/8")},
	v1.IPv6Protocol: {Mode: proxier.LocalModeClusterCIDR, CIDR: netip.MustParsePrefix("fd00:10::/64")},
}

func TestFullSyncOverall(t *testing.T) {
	w := newWorld(t, Config{LocalhostNodePorts: true, Detectors: podCIDR4})
	w.addService(svc("ns1", "svc1", "172.30.0.41", nil))
	w.addSlice(slice("ns1", "svc1", "10.180.0.1"))
	w.addService(svc("ns2", "svc2", "172.30.0.42", func(s *v1.Service) { s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, 3001 }))
	w.mustSync(true)
	dump := w.fakes[v1.IPv4Protocol].Dump()
	wantFilter := `*filter
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
:KUBE-EXTERNAL-SERVICES -
:KUBE-FIREWALL -
:KUBE-FORWARD -
:KUBE-NODEPORTS -
:KUBE-PROXY-FIREWALL -
:KUBE-SERVICES -
-A INPUT -j KUBE-FIREWALL
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j REJECT
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x00004000/0x00004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j REJECT
COMMIT
`
	wantNAT := `*nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:KUBE-HAIRPIN -
:KUBE-MARK-MASQ -
:KUBE-NODEPORTS -
:KUBE-POSTROUTING -
:KUBE-SERVICES -
:KUBE-SVC-XPGD46QRK7WJZT7O -
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes hairpin traffic requiring SNAT" -m conntrack --ctstate DNAT -j KUBE-HAIRPIN
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:8080" -p tcp -j DNAT --to-destination 10.180.0.1:8080
COMMIT
`
	if got := sectionOf(dump, "filter"); got != wantFilter {
		t.Errorf("filter table:\n%s", diffLines(lines(wantFilter), lines(got)))
	}
	if got := sectionOf(dump, "nat"); got != wantNAT {
		t.Errorf("nat table:\n%s", diffLines(lines(wantNAT), lines(got)))
	}
}

// manyServices adds n ClusterIP Services ns/svc-i with one endpoint each.
func manyServices(w *world, n int) {
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		w.addService(svc("ns", name, fmt.Sprintf("172.30.%d.%d", i/250, i%250+1), nil))
		w.addSlice(slice("ns", name, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)))
	}
}

// equivalentToFull checks that the Fake's state equals what a full sync of the same applied
// state writes into an empty Fake (KUBE-SERVICES rule order and canaries aside; the NodePort
// jump must stay last).
func equivalentToFull(t *testing.T, w *world) {
	t.Helper()
	fresh := NewFake(v1.IPv4Protocol)
	cfg := w.p.cfg
	cfg.Executors = map[v1.IPFamily]Executor{v1.IPv4Protocol: fresh}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req := &proxier.SyncRequest{Full: true, Node: w.node, Trackers: w.trackers[:1], Checkouts: []*proxier.Checkout{{Family: v1.IPv4Protocol}}}
	if err := p.Sync(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	noCanary := func(l string) bool { return strings.Contains(l, ChainCanary) }
	got := slices.DeleteFunc(lines(w.fakes[v1.IPv4Protocol].Dump()), noCanary)
	want := lines(fresh.Dump())
	slices.Sort(got)
	slices.Sort(want)
	if d := diffLines(want, got); d != "" {
		t.Errorf("state after partial syncs differs from a full sync's:\n%s", d)
	}
	services := w.fakes[v1.IPv4Protocol].Rules(tableNAT, ChainServices)
	if len(services) == 0 || !strings.Contains(services[len(services)-1], "-j "+ChainNodePorts) {
		t.Errorf("the NodePort jump is not the last rule of nat KUBE-SERVICES: %q", services)
	}
}

// chainsOfRestore returns the chains a restore input names in chain lines, -A, -I, -D and -X.
func chainsOfRestore(data string) map[string]bool {
	out := map[string]bool{}
	for _, l := range lines(data) {
		switch {
		case strings.HasPrefix(l, ":"):
			out[strings.Fields(l[1:])[0]] = true
		case strings.HasPrefix(l, "-"):
			out[strings.Fields(l)[1]] = true
		}
	}
	return out
}

func TestPartialSyncWritesOnlyTheChangedService(t *testing.T) {
	w := newWorld(t, Config{Detectors: podCIDR4})
	manyServices(w, 1000)
	w.mustSync(true)
	fake := w.fakes[v1.IPv4Protocol]
	before := len(fake.Restores())

	w.addSlice(slice("ns", "svc-500", "10.9.9.9")) // one endpoint replaced
	w.mustSync(false)
	restores := fake.Restores()
	if len(restores) != before+1 {
		t.Fatalf("%d restores for one endpoint change, want 1", len(restores)-before)
	}
	data := restores[len(restores)-1]
	name := "ns/svc-500:p80"
	allowed := map[string]bool{chainsFor(name, "tcp").cluster: true}
	for chain := range chainsOfRestore(data) {
		if !allowed[chain] {
			t.Errorf("partial restore touches chain %s, which is not svc-500's:\n%s", chain, data)
		}
	}
	if strings.Contains(data, "*filter") {
		t.Errorf("partial restore has a filter section although no filter rule changed:\n%s", data)
	}
	if n := len(lines(data)); n > 5 { // *nat, the chain line, masquerade and DNAT rules, COMMIT
		t.Errorf("partial restore has %d lines:\n%s", n, data)
	}
	equivalentToFull(t, w)

	// A Service whose top-level rules change: only its own rules move at the top level.
	w.deleteService(svc("ns", "svc-7", "172.30.0.8", nil))
	w.mustSync(false)
	data = fake.Restores()[len(fake.Restores())-1]
	for _, l := range lines(data) {
		if strings.HasPrefix(l, "-D ") && !strings.Contains(l, "ns/svc-7:p80") {
			t.Errorf("deletion of svc-7 deletes another rule: %s", l)
		}
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, "-I ") {
			t.Errorf("deletion of svc-7 adds a rule: %s", l)
		}
	}
	equivalentToFull(t, w)
}

func TestNoopPartialSyncRunsNothing(t *testing.T) {
	w := newWorld(t, Config{Detectors: podCIDR4})
	manyServices(w, 20)
	w.mustSync(true)
	fake := w.fakes[v1.IPv4Protocol]
	before, dump := len(fake.Restores()), fake.Dump()

	// "Nothing" is: no iptables-restore at all, and no change to any table.
	w.mustSync(false) // empty checkout
	s := slice("ns", "svc-3", "10.1.0.4")
	s.Endpoints[0].NodeName = ptrTo("node-c") // still remote: the endpoint changes, its rules do not
	w.addSlice(s)
	w.mustSync(false)
	if n := len(fake.Restores()) - before; n != 0 {
		t.Errorf("no-op syncs ran %d iptables-restore, want 0: %q", n, fake.Restores()[before:])
	}
	if got := fake.Dump(); got != dump {
		t.Errorf("no-op syncs changed the tables")
	}
}

func ptrTo[T any](v T) *T { return &v }

func TestPartialSyncTransitions(t *testing.T) {
	w := newWorld(t, Config{Detectors: podCIDR4, NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}})
	lb := func(s *v1.Service) {
		s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeLoadBalancer, 3001
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 30000
		s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/25"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "1.2.3.4"}}
	}
	w.addService(svc("ns", "lb", "172.30.0.50", lb))
	w.mustSync(true)
	steps := []struct {
		name string
		do   func()
	}{
		{"endpoints appear", func() { w.addSlice(slice("ns", "lb", "10.1.0.1", "local:10.1.0.2")) }},
		{"local endpoint goes", func() { w.addSlice(slice("ns", "lb", "10.1.0.1")) }},
		{"policy becomes Cluster", func() {
			w.addService(svc("ns", "lb", "172.30.0.50", func(s *v1.Service) {
				lb(s)
				s.Spec.ExternalTrafficPolicy, s.Spec.HealthCheckNodePort = v1.ServiceExternalTrafficPolicyCluster, 0
			}))
		}},
		{"affinity on", func() {
			w.addService(svc("ns", "lb", "172.30.0.50", func(s *v1.Service) { lb(s); s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }))
		}},
		{"endpoints go", func() { w.addSlice(slice("ns", "lb")) }},
		{"becomes ClusterIP", func() { w.addService(svc("ns", "lb", "172.30.0.50", nil)) }},
		{"service goes", func() { w.deleteService(svc("ns", "lb", "172.30.0.50", nil)) }},
	}
	for _, s := range steps {
		s.do()
		if err := w.sync(false); err != nil {
			t.Fatalf("%s: partial sync: %v", s.name, err)
		}
		t.Run(s.name, func(t *testing.T) { equivalentToFull(t, w) })
	}
	for _, c := range mustChains(t, w.fakes[v1.IPv4Protocol], tableNAT) {
		if isServiceChain(c) {
			t.Errorf("service chain %s left after the Service was deleted", c)
		}
	}
}

func TestFullSyncDeletesStaleChains(t *testing.T) {
	w := newWorld(t, Config{})
	fake := w.fakes[v1.IPv4Protocol]
	mustRestore(t, fake, "*nat\n:KUBE-SVC-STALE - [0:0]\n:KUBE-SEP-STALE - [0:0]\n:CNI-OTHER - [0:0]\n-A KUBE-SVC-STALE -j KUBE-SEP-STALE\nCOMMIT\n")
	w.addService(svc("ns", "a", "172.30.0.1", nil))
	w.addSlice(slice("ns", "a", "10.1.0.1"))
	w.mustSync(true)
	chains := mustChains(t, fake, tableNAT)
	for _, stale := range []string{"KUBE-SVC-STALE", "KUBE-SEP-STALE"} {
		if slices.Contains(chains, stale) {
			t.Errorf("stale chain %s survived a full sync", stale)
		}
	}
	if !slices.Contains(chains, "CNI-OTHER") {
		t.Errorf("a foreign chain was deleted")
	}
}

func TestFailedRestoreMakesNextSyncFull(t *testing.T) {
	m := metrics.New(metrics.ModeIPTables)
	w := newWorld(t, Config{Metrics: m})
	manyServices(w, 3)
	w.mustSync(true)
	fake := w.fakes[v1.IPv4Protocol]
	w.addSlice(slice("ns", "svc-1", "10.9.9.9"))
	fake.FailNextRestore(errors.New("injected"))
	if err := w.sync(false); err == nil {
		t.Fatalf("partial sync succeeded although iptables-restore failed")
	}
	if got := testutil.ToFloat64(m.IPTablesRestoreFailuresTotal.WithLabelValues("IPv4")); got != 1 {
		t.Errorf("restore failures = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.IPTablesPartialRestoreFailuresTotal.WithLabelValues("IPv4")); got != 1 {
		t.Errorf("partial restore failures = %v, want 1", got)
	}
	// Something flushes KUBE-SERVICES meanwhile: only a full sync notices (it reads the
	// tables) and writes the chain again.
	if err := fake.Restore(context.Background(), []byte("*nat\n:"+ChainServices+" - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	w.mustSync(false) // asked partial, must be full: the state is unknown
	last := fake.Restores()[len(fake.Restores())-1]
	if !strings.Contains(last, ":"+ChainServices+" - [0:0]") {
		t.Errorf("the sync after a failure was not full:\n%s", last)
	}
	equivalentToFull(t, w)
	wantNAT := 5 /* static */ + 1 /* nodeport jump */ + 3*2 /* services: KUBE-SERVICES and DNAT rules */
	if got := testutil.ToFloat64(m.IPTablesRulesTotal.WithLabelValues("nat", "IPv4")); got != float64(wantNAT) {
		t.Errorf("nat rules total = %v, want %d", got, wantNAT)
	}
}

func TestDualStackSync(t *testing.T) {
	w := newWorld(t, Config{Families: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, Detectors: podCIDR4})
	w.addService(svc("ns", "v4", "172.30.0.1", nil))
	w.addSlice(slice("ns", "v4", "10.1.0.1"))
	w.addService(svc("ns", "v6", "fd00:10:96::1", nil))
	w.addSlice(slice("ns", "v6", "fd00:10::1"))
	w.mustSync(true)
	v4, v6 := w.fakes[v1.IPv4Protocol].Dump(), w.fakes[v1.IPv6Protocol].Dump()
	if !strings.Contains(v4, "-d 172.30.0.1 ") || strings.Contains(v4, "fd00") {
		t.Errorf("IPv4 tables wrong:\n%s", sectionOf(v4, "nat"))
	}
	if !strings.Contains(v6, "--to-destination [fd00:10::1]:8080") || strings.Contains(v6, "172.30") {
		t.Errorf("IPv6 tables wrong:\n%s", sectionOf(v6, "nat"))
	}
	if !strings.Contains(v6, "! -d ::1/128 -j KUBE-NODEPORTS") || strings.Contains(v6, ChainKubeletFirewall) {
		t.Errorf("IPv6 NodePort jump or KUBE-FIREWALL wrong:\n%s", v6)
	}
}

func TestNewValidates(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no family":      {},
		"bad bit":        {Families: []v1.IPFamily{v1.IPv4Protocol}, MasqueradeBit: 32},
		"bad variant":    {Families: []v1.IPFamily{v1.IPv4Protocol}, Variant: "ebtables"},
		"unknown family": {Families: []v1.IPFamily{"IPv5"}, Executors: map[v1.IPFamily]Executor{"IPv5": NewFake("IPv5")}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}

// TestLargeClusterModeDropsEndpointComments: above 1,000 endpoints in all, per-endpoint rules
// (DNAT, hairpin) carry no comment, as in upstream's large-cluster mode; crossing the threshold
// in a partial sync rewrites every port's chains, in either direction.
func TestLargeClusterModeDropsEndpointComments(t *testing.T) {
	w := newWorld(t, Config{Detectors: podCIDR4})
	manyServices(w, 1000) // one endpoint each: 1,000, not above the threshold
	w.mustSync(true)
	fake := w.fakes[v1.IPv4Protocol]
	farChain := chainsFor("ns/svc-999:p80", "tcp").cluster
	commented := func(chain string) []bool {
		var out []bool
		for _, r := range fake.Rules(tableNAT, chain) {
			out = append(out, strings.Contains(r, "-m comment"))
		}
		return out
	}
	if got := commented(farChain); !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("below the threshold, comments on %s's rules (masquerade, DNAT) = %v, want both", farChain, got)
	}

	w.addSlice(slice("ns", "svc-0", "local:10.1.0.1", "10.1.0.200")) // 1,001 endpoints
	w.mustSync(false)
	if got := commented(farChain); !slices.Equal(got, []bool{true, false}) {
		t.Errorf("above the threshold, comments on %s's rules = %v, want only the masquerade rule's", farChain, got)
	}
	for _, r := range fake.Rules(tableNAT, ChainHairpin) {
		if strings.Contains(r, "-m comment") {
			t.Errorf("above the threshold, hairpin rule %q has a comment", r)
		}
	}
	for _, r := range fake.Rules(tableNAT, ChainServices) {
		if !strings.Contains(r, "-m comment") {
			t.Errorf("KUBE-SERVICES rule %q lost its comment: only per-endpoint rules do", r)
		}
	}
	equivalentToFull(t, w)

	w.addSlice(slice("ns", "svc-0", "10.1.0.1")) // back to 1,000
	w.mustSync(false)
	if got := commented(farChain); !slices.Equal(got, []bool{true, true}) {
		t.Errorf("back at the threshold, comments on %s's rules = %v, want both", farChain, got)
	}
	equivalentToFull(t, w)
}
