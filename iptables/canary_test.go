package iptables

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

func TestCanaryLossForcesFullSync(t *testing.T) {
	lost := make(chan struct{}, 16)
	w := newWorld(t, Config{SyncPeriod: 10 * time.Millisecond, OnCanaryLost: func() { lost <- struct{}{} }})
	fake := w.fakes[v1.IPv4Protocol]
	w.addService(svc("ns", "a", "172.30.0.1", nil))
	w.addSlice(slice("ns", "a", "10.1.0.1"))
	w.mustSync(true)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	canariesUp := func() bool {
		for _, table := range canaryTables {
			if ok, _ := fake.RuleExists(table, ChainCanary, canaryMarker...); !ok {
				return false
			}
		}
		return true
	}
	waitFor(t, "canaries created", canariesUp)
	select {
	case <-lost:
		t.Fatalf("OnCanaryLost called without a flush")
	case <-time.After(50 * time.Millisecond):
	}

	// External flush of everything (iptables -F; iptables -X in each table).
	mustRestore(t, fake, "*mangle\n-F\n-X\nCOMMIT\n*nat\n-F\n-X\nCOMMIT\n*filter\n-F\n-X\nCOMMIT\n")
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatalf("OnCanaryLost not called after a flush")
	}
	waitFor(t, "canaries recreated", canariesUp)
	w.mustSync(false)
	if got := fake.Rules(tableNAT, "PREROUTING"); len(got) != 1 || !strings.Contains(got[0], ChainServices) {
		t.Errorf("jump rules not repaired by the sync after the canary loss: PREROUTING = %q", got)
	}
	equivalentToFull(t, w)

	cancel()
	<-done
	if slices.Contains(mustChains(t, fake, tableMangle), ChainCanary) {
		t.Errorf("canary left after Run returned")
	}
}

func TestCleanupFamilyOverFake(t *testing.T) {
	w := newWorld(t, Config{LocalhostNodePorts: true})
	fake := w.fakes[v1.IPv4Protocol]
	w.addService(svc("ns", "a", "172.30.0.1", func(s *v1.Service) { s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, 3001 }))
	w.addSlice(slice("ns", "a", "10.1.0.1"))
	w.mustSync(true)
	fp := w.p.families[0]
	if err := fp.ensureCanaries(); err != nil {
		t.Fatal(err)
	}
	mustRestore(t, fake, "*nat\n:CNI-OTHER - [0:0]\nCOMMIT\n")
	if err := cleanupFamily(fake); err != nil {
		t.Fatalf("cleanupFamily: %v", err)
	}
	for _, l := range lines(fake.Dump()) {
		if strings.Contains(l, "KUBE-") && !strings.Contains(l, ChainKubeletFirewall) {
			t.Errorf("left after cleanup: %s", l)
		}
	}
	if !slices.Contains(mustChains(t, fake, tableFilter), ChainKubeletFirewall) || len(fake.Rules(tableFilter, "INPUT")) != 1 {
		t.Errorf("kubelet's KUBE-FIREWALL or its jump removed:\n%s", sectionOf(fake.Dump(), "filter"))
	}
	if !slices.Contains(mustChains(t, fake, tableNAT), "CNI-OTHER") {
		t.Errorf("foreign chain removed")
	}
	before := len(fake.Restores())
	if err := cleanupFamily(fake); err != nil || len(fake.Restores()) != before {
		t.Errorf("second cleanup: err %v, %d restores (want none)", err, len(fake.Restores())-before)
	}
}
