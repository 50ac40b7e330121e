package proxiertest

import (
	"os"
	"os/exec"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func skipUnlessRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and nftables rules")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft CLI for the self-test backend")
	}
}

// TestRunKernelSelfTest runs RunKernel with the self-test backend over every Case: reach (all
// endpoints seen), masquerade and not, hairpin, affinity, reject (TCP and UDP), drop.
func TestRunKernelSelfTest(t *testing.T) {
	skipUnlessRoot(t)
	for _, family := range families {
		t.Run(string(family), func(t *testing.T) {
			RunKernel(t, NewConfig(family), newNFTSelfTestBackend)
		})
	}
}

// TestKernelHarnessCatchesWrongExpectations proves the kernel harness can fail: Cases with
// deliberately wrong expectations must be reported.
func TestKernelHarnessCatchesWrongExpectations(t *testing.T) {
	skipUnlessRoot(t)
	cfg := NewConfig(v1.IPv4Protocol)
	env := startKernel(t, cfg, newNFTSelfTestBackend)
	byName := map[string]Case{}
	for _, c := range Cases(cfg.Family) {
		byName[c.Name] = c
	}
	mutate := func(name string, f func(w *Want)) Case {
		c := byName[name]
		c.Want.Endpoints = slices.Clone(c.Want.Endpoints)
		f(&c.Want)
		return c
	}
	for _, tc := range []struct {
		what string
		c    Case
	}{
		{"pod traffic claimed masqueraded", mutate("clusterip-from-pod", func(w *Want) { w.Masquerade = true })},
		{"node traffic claimed unmasqueraded", mutate("clusterip-from-node", func(w *Want) { w.Masquerade = false })},
		{"remote endpoint left out", mutate("clusterip-from-pod", func(w *Want) { w.Endpoints = w.Endpoints[:1] })},
		{"extra endpoint never reached", mutate("itp-local-from-pod", func(w *Want) {
			w.Endpoints = append(w.Endpoints, ep(planFor(cfg.Family), NodeBName, 21, 8080))
		})},
		{"reject claimed reachable", mutate("no-endpoints-clusterip-from-pod", func(w *Want) { *w = reach(false, "10.244.1.10:8080") })},
		{"drop claimed rejected", mutate("itp-local-remote-from-pod", func(w *Want) { *w = rejected })},
		{"reject claimed dropped", mutate("no-endpoints-clusterip-udp-from-pod", func(w *Want) { *w = dropped })},
		{"hairpin claimed unmasqueraded", mutate("hairpin-clusterip", func(w *Want) { w.Masquerade = false })},
	} {
		if problems := env.check(tc.c); len(problems) == 0 {
			t.Errorf("%s (%s): the harness reported no problem", tc.what, tc.c.Name)
		} else {
			t.Logf("%s: reported as expected: %v", tc.what, problems)
		}
	}
}
