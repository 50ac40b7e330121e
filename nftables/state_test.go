package nftables

import (
	"fmt"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// manyServices adds n ClusterIP Services svc-<i> with two remote endpoints each.
func manyServices(env *testEnv, n int) { servicesFrom(env, 0, n) }

// servicesFrom adds the Services svc-<from> to svc-<to-1> of manyServices.
func servicesFrom(env *testEnv, from, to int) {
	for i := from; i < to; i++ {
		name := fmt.Sprintf("svc-%d", i)
		env.add(makeService(name, fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)),
			makeSlice(name, ep{ip: fmt.Sprintf("10.2.%d.%d", i/250, i%250+1)}, ep{ip: fmt.Sprintf("10.3.%d.%d", i/250, i%250+1)}))
	}
}

// assertTransaction compares the last transaction's text with want (lines, any order).
func assertTransaction(t *testing.T, env *testEnv, want ...string) {
	t.Helper()
	tx := env.fake.LastTransaction()
	got := strings.Split(strings.TrimSpace(tx.String()), "\n")
	if tx.Empty() {
		got = nil
	}
	if d := diffLines(got, want); d != "" {
		t.Errorf("last transaction:%s", d)
	}
	ops := 0
	for _, w := range want {
		if !strings.HasPrefix(w, "add rule ") { // a chain is created with its rules in one operation
			ops++
		}
	}
	if n := tx.Operations(); n != ops {
		t.Errorf("last transaction has %d operations, want %d", n, ops)
	}
}

// TestSyncTouchesOnlyWhatChanged: among 1,000 Services, a change writes only the changed
// Service's elements, and a sync without changes writes nothing.
func TestSyncTouchesOnlyWhatChanged(t *testing.T) {
	env := newTestEnv(t, testConfig())
	manyServices(env, 1000)
	env.sync(true)
	if got := len(env.fake.Elements(v1.IPv4Protocol, "vip-endpoints")); got != 2000 {
		t.Fatalf("%d vip-endpoints elements after the first sync, want 2000", got)
	}

	t.Run("no change", func(t *testing.T) {
		env.t = t
		env.sync(false)
		assertTransaction(t, env)
	})
	t.Run("full sync without change", func(t *testing.T) {
		env.t = t
		env.sync(true)
		assertTransaction(t, env)
	})
	t.Run("one endpoint replaced", func(t *testing.T) {
		env.t = t
		env.add(makeService("svc-500", "172.30.2.1"), makeSlice("svc-500", ep{ip: "10.2.2.1"}, ep{ip: "10.4.0.1"}))
		env.sync(false)
		assertTransaction(t, env,
			"delete element ip nodeproxy vip-endpoints { 172.30.2.1 . tcp . 80 . 1 : 10.3.2.1 . 8080 }",
			"add element ip nodeproxy vip-endpoints { 172.30.2.1 . tcp . 80 . 1 : 10.4.0.1 . 8080 }",
		)
	})
	t.Run("one endpoint removed", func(t *testing.T) {
		env.t = t
		env.add(makeService("svc-500", "172.30.2.1"), makeSlice("svc-500", ep{ip: "10.4.0.1"}))
		env.sync(false)
		assertTransaction(t, env,
			"add chain ip nodeproxy dnat-vip-1",
			"add rule ip nodeproxy dnat-vip-1 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @vip-endpoints",
			`delete element ip nodeproxy service-ips { 172.30.2.1 . tcp . 80 comment "ns/svc-500:p80" : goto dnat-vip-2 }`,
			"delete element ip nodeproxy vip-endpoints { 172.30.2.1 . tcp . 80 . 0 : 10.2.2.1 . 8080 }",
			"delete element ip nodeproxy vip-endpoints { 172.30.2.1 . tcp . 80 . 1 : 10.4.0.1 . 8080 }",
			`add element ip nodeproxy service-ips { 172.30.2.1 . tcp . 80 comment "ns/svc-500:p80" : goto dnat-vip-1 }`,
			"add element ip nodeproxy vip-endpoints { 172.30.2.1 . tcp . 80 . 0 : 10.4.0.1 . 8080 }",
		)
	})
	t.Run("Service deleted", func(t *testing.T) {
		env.t = t
		env.tracker.UpdateService(makeService("svc-500", "172.30.2.1"), nil)
		env.sync(false)
		assertTransaction(t, env,
			"delete element ip nodeproxy cluster-ips { 172.30.2.1 }",
			`delete element ip nodeproxy service-ips { 172.30.2.1 . tcp . 80 comment "ns/svc-500:p80" : goto dnat-vip-1 }`,
			"delete element ip nodeproxy vip-endpoints { 172.30.2.1 . tcp . 80 . 0 : 10.4.0.1 . 8080 }",
			"delete chain ip nodeproxy dnat-vip-1",
		)
	})
}

// TestConflictingOwners: two Services claiming one external IP and port; the first by name
// wins, and the other takes over when it goes away.
func TestConflictingOwners(t *testing.T) {
	env := newTestEnv(t, testConfig())
	env.add(makeService("a", "172.30.0.1", withExternalIPs("1.2.3.4")), makeSlice("a", ep{ip: "10.0.2.1"}))
	env.add(makeService("b", "172.30.0.2", withExternalIPs("1.2.3.4")), makeSlice("b", ep{ip: "10.0.2.2"}))
	env.sync(true)
	if got := env.trace(testOutside, "1.2.3.4", 80, false); got != "accept 10.0.2.1:8080 masq" {
		t.Errorf("external IP claimed twice: got %q, want Service a's endpoint", got)
	}
	env.tracker.UpdateService(makeService("a", "172.30.0.1", withExternalIPs("1.2.3.4")), nil)
	env.sync(false)
	if got := env.trace(testOutside, "1.2.3.4", 80, false); got != "accept 10.0.2.2:8080 masq" {
		t.Errorf("after deleting Service a: got %q, want Service b's endpoint", got)
	}
}

// TestFailedSyncRebuilds: after a failed transaction the next sync recreates the table.
func TestFailedSyncRebuilds(t *testing.T) {
	env := newTestEnv(t, testConfig())
	env.add(makeService("a", "172.30.0.1"), makeSlice("a", ep{ip: "10.0.2.1"}))
	env.sync(true)
	failing := &failingConn{}
	env.p.conn = failing
	env.add(makeService("a", "172.30.0.1"), makeSlice("a", ep{ip: "10.0.2.9"}))
	if err := env.trySync(false); err == nil {
		t.Fatal("sync over a failing connection succeeded")
	}
	env.p.conn = env.fake
	env.sync(true)
	tx := env.fake.LastTransaction().String()
	for _, want := range []string{"delete table ip nodeproxy", "delete table ip kube-proxy", "10.0.2.9 . 8080"} {
		if !strings.Contains(tx, want) {
			t.Errorf("the sync after a failure does not contain %q:\n%s", want, tx)
		}
	}
	if got := env.trace(testLocalPod, "172.30.0.1", 80, false); got != "accept 10.0.2.9:8080" {
		t.Errorf("after the rebuild: got %q", got)
	}
}

type failingConn struct{}

func (failingConn) Apply(*Transaction) error { return ErrBusy }
