package iptables

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// jumpInsertions returns the "-I <built-in chain> 1" lines of a restore input.
func jumpInsertions(restore string) []string {
	var out []string
	for _, l := range lines(restore) {
		for _, chain := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
			if strings.HasPrefix(l, "-I "+chain+" 1 ") {
				out = append(out, l)
			}
		}
	}
	return out
}

func TestFullSyncWritesOnlyMissingJumpsInItsRestore(t *testing.T) {
	w := newWorld(t, Config{LocalhostNodePorts: true, Detectors: podCIDR4})
	w.addService(svc("ns1", "svc1", "172.30.0.41", nil))
	w.addSlice(slice("ns1", "svc1", "10.180.0.1"))
	fake := w.fakes[v1.IPv4Protocol]

	w.mustSync(true)
	restores := fake.Restores()
	if got, want := len(jumpInsertions(restores[len(restores)-1])), len(jumpRules)+len(kubeletFirewallJumps); got != want {
		t.Fatalf("first full sync inserted %d jumps in its restore, want %d:\n%s", got, want, restores[len(restores)-1])
	}

	before := len(restores)
	w.mustSync(true)
	restores = fake.Restores()
	for _, r := range restores[before:] {
		if got := jumpInsertions(r); len(got) != 0 {
			t.Fatalf("second full sync re-inserted present jumps: %q", got)
		}
	}

	// Something deletes one jump: the next full sync puts back exactly that one, once.
	natJump := jumpRules[len(jumpRules)-2] // nat PREROUTING -> KUBE-SERVICES
	if err := fake.DeleteRule(natJump.table, natJump.from, natJump.args()...); err != nil {
		t.Fatal(err)
	}
	w.mustSync(true)
	restores = fake.Restores()
	got := jumpInsertions(restores[len(restores)-1])
	if len(got) != 1 || !strings.HasPrefix(got[0], "-I PREROUTING 1 ") || !strings.HasSuffix(got[0], "-j KUBE-SERVICES") {
		t.Fatalf("after deleting the PREROUTING jump, full sync inserted %q", got)
	}
	if n := strings.Count(fake.Dump(), "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"); n != 1 {
		t.Fatalf("PREROUTING jump present %d times after repair, want 1", n)
	}
}
