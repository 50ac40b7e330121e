package nftables

import (
	"context"
	"fmt"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// setSize returns the size the Fake's IPv4 table declares for a set (0: none or no set).
func setSize(f *Fake, set string) int {
	t := f.snapshot(v1.IPv4Protocol, TableName)
	if t == nil || t.sets[set] == nil {
		return 0
	}
	return t.sets[set].spec.size
}

// removeServices removes the Services svc-<from> to svc-<to-1> of manyServices and their slices.
func removeServices(env *testEnv, from, to int) {
	for i := from; i < to; i++ {
		name := fmt.Sprintf("svc-%d", i)
		env.tracker.UpdateService(makeService(name, fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)), nil)
		env.tracker.UpdateEndpointSlice(makeSlice(name), true)
	}
}

// TestSetsAreSizedForTheirElements: a new table's hash sets get half as much room again as
// the elements they start with, at least minSetSize; dynamic and interval sets get none of
// these sizes.
func TestSetsAreSizedForTheirElements(t *testing.T) {
	env := newTestEnv(t, testConfig())
	manyServices(env, 1000) // 2 endpoints each
	env.sync(true)
	for set, want := range map[string]int{
		"vip-endpoints":       3000, // 2,000 elements
		mapServiceIPs:         1500, // 1,000
		setClusterIPs:         1500, // 1,000
		mapNoEndpointServices: minSetSize,
		setFirewallAllow:      0, // interval
		"vip-affinity":        affinitySetSize,
	} {
		got := setSize(env.fake, set)
		if set == "vip-affinity" {
			// the dynamic sets' bound is set where they are converted for the kernel
			got = int(gnftSet(env.p.families[v1.IPv4Protocol].fam, nil, env.fake.snapshot(v1.IPv4Protocol, TableName).sets[set].spec).Size)
		}
		if got != want {
			t.Errorf("set %s: size %d, want %d", set, got, want)
		}
	}
}

// TestGrowingPastASetSizeBuildsTheTableAgain: changes that keep every set within its size are
// incremental; the change that would take vip-endpoints past its size builds the table again
// with larger sets instead of failing (the Fake, as the kernel, refuses elements past a size).
func TestGrowingPastASetSizeBuildsTheTableAgain(t *testing.T) {
	env := newTestEnv(t, testConfig())
	manyServices(env, 1000) // vip-endpoints: 2,000 elements, size 3,000
	env.sync(false)
	step := func(what string, change func(), wantRebuild bool, wantElems, wantSize int) {
		t.Helper()
		change()
		env.sync(false)
		tx := env.fake.LastTransaction()
		if rebuilt := createsTables(tx); rebuilt != wantRebuild {
			t.Errorf("%s: the transaction builds the table: %t, want %t", what, rebuilt, wantRebuild)
		}
		if got := len(env.fake.Elements(v1.IPv4Protocol, "vip-endpoints")); got != wantElems {
			t.Errorf("%s: %d vip-endpoints elements, want %d", what, got, wantElems)
		}
		if got := setSize(env.fake, "vip-endpoints"); got != wantSize {
			t.Errorf("%s: vip-endpoints size %d, want %d", what, got, wantSize)
		}
	}
	step("400 more Services", func() { servicesFrom(env, 1000, 1400) }, false, 2800, 3000)
	step("200 more, past the size", func() { servicesFrom(env, 1400, 1600) }, true, 3200, 4800)
	step("300 fewer", func() { removeServices(env, 1300, 1600) }, false, 2600, 4800)
	step("300 again", func() { servicesFrom(env, 1300, 1600) }, false, 3200, 4800)
	step("1,000 more, past the new size", func() { servicesFrom(env, 1600, 2600) }, true, 5200, 7800)
}

// TestKernelGrowingPastASetSize: the kernel refuses elements past a set's size (ENFILE);
// growing past it builds the table again, sized for the new elements.
func TestKernelGrowingPastASetSize(t *testing.T) {
	env, ns := newKernelEnv(t, testConfig())
	manyServices(env, 600) // vip-endpoints: 1,200 elements, size 1,800
	env.sync(false)
	if out := ns.nft(t, "list", "map", "ip", TableName, "vip-endpoints"); !strings.Contains(out, "size 1800") {
		t.Fatalf("vip-endpoints after the first sync:\n%s", firstLines(out, 6))
	}
	servicesFrom(env, 600, 1000) // 2,000 elements: past 1,800
	env.sync(false)
	out := ns.nft(t, "list", "map", "ip", TableName, "vip-endpoints")
	if !strings.Contains(out, "size 3000") {
		t.Errorf("vip-endpoints after growing, want size 3000:\n%s", firstLines(out, 6))
	}
	if n := strings.Count(out, " : 10."); n != 2000 {
		t.Errorf("vip-endpoints holds %d elements, want 2000", n)
	}
}

// firstLines returns the first n lines of s.
func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

// TestOutgrowingASetBuildsEveryFamilyAgain: when the IPv4 table outgrows a set in the same
// sync that changes IPv6 chains (a Service going from 3 to 2 endpoints), both tables are built
// again in one transaction, which the Fake accepts with the kernel's ordering checks.
func TestOutgrowingASetBuildsEveryFamilyAgain(t *testing.T) {
	cfg := testConfig()
	cfg.Families = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	fake := NewFake()
	p, err := NewWithConn(cfg, fake)
	if err != nil {
		t.Fatal(err)
	}
	v4 := &testEnv{t: t, tracker: proxier.NewTracker(v1.IPv4Protocol, testNode)}
	v6 := proxier.NewTracker(v1.IPv6Protocol, testNode)
	six := func(ips ...string) {
		svc := makeService("six", "fd00:30::1")
		svc.Spec.ClusterIPs = []string{"fd00:30::1"}
		svc.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
		var eps []ep
		for _, ip := range ips {
			eps = append(eps, ep{ip: ip})
		}
		slice := makeSlice("six", eps...)
		slice.AddressType = discovery.AddressTypeIPv6
		v6.UpdateService(nil, svc)
		v6.UpdateEndpointSlice(slice, false)
	}
	sync := func(full bool) {
		t.Helper()
		req := &proxier.SyncRequest{Full: full, Node: testEnvNode(),
			Checkouts: []*proxier.Checkout{v4.tracker.Checkout(), v6.Checkout()}, Trackers: []*proxier.Tracker{v4.tracker, v6}}
		if err := p.Sync(context.Background(), req); err != nil {
			t.Fatalf("Sync(full=%t): %v", full, err)
		}
	}
	manyServices(v4, 600) // vip-endpoints: 1,200 elements, size 1,800
	six("fd00:2::1", "fd00:2::2", "fd00:2::3")
	sync(true)
	servicesFrom(v4, 600, 1000) // 2,000: past the size
	six("fd00:2::1", "fd00:2::2")
	sync(false)
	replaced := map[*family]bool{}
	for _, o := range fake.LastTransaction().ops {
		if o.kind == opDeleteTable && o.table == TableName {
			replaced[o.fam] = true
		}
	}
	if len(replaced) != 2 {
		t.Errorf("the sync replaced %d families' tables, want both", len(replaced))
	}
	if got := len(fake.Elements(v1.IPv4Protocol, "vip-endpoints")); got != 2000 {
		t.Errorf("IPv4 vip-endpoints holds %d elements, want 2000", got)
	}
	if got := setSize(fake, "vip-endpoints"); got != 3000 {
		t.Errorf("IPv4 vip-endpoints size %d, want 3000", got)
	}
	if got := fake.Elements(v1.IPv6Protocol, "vip-endpoints"); len(got) != 2 {
		t.Errorf("IPv6 vip-endpoints = %v, want the 2 endpoints of six", got)
	}
	chains := strings.Join(fake.Chains(v1.IPv6Protocol), " ")
	if !strings.Contains(chains, "dnat-vip-2") || strings.Contains(chains, "dnat-vip-3") {
		t.Errorf("IPv6 chains %s, want dnat-vip-2 and no dnat-vip-3", chains)
	}
}
