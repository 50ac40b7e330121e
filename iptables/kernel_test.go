package iptables

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// needRoot skips a test that needs root.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and iptables rules")
	}
}

// newTestNetNS creates the named network namespace np-ipt-<random> and deletes it at cleanup.
func newTestNetNS(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("np-ipt-%d-%06x", os.Getpid(), rand.IntN(1<<24))
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		created, err := netns.NewNamed(name)
		if err == nil {
			created.Close()
		}
		if setErr := netns.Set(orig); setErr != nil {
			errc <- fmt.Errorf("returning to the original namespace: %w", setErr)
			return // the locked thread is discarded
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("creating network namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting network namespace %s: %v", name, err)
		}
	})
	return name
}

// inNS runs a command in a named namespace and returns its standard output.
func inNS(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("ip netns exec %s %q: %v: %s", ns, args, err, msg)
	}
	return string(out)
}

// save returns iptables-save of one variant and family in ns.
func save(t *testing.T, ns, variant string, family v1.IPFamily, table string) string {
	t.Helper()
	bin := "iptables-" + variant + "-save"
	if family == v1.IPv6Protocol {
		bin = "ip6tables-" + variant + "-save"
	}
	return inNS(t, ns, bin, "-t", table)
}

// restoreInNS feeds data to iptables-VARIANT-restore --noflush in ns.
func restoreInNS(t *testing.T, ns, variant, data string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "iptables-"+variant+"-restore", "-w", "5", "--noflush")
	cmd.Stdin = strings.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-%s-restore in %s: %v: %s", variant, ns, err, out)
	}
}

// savedRules returns the "-A CHAIN ..." lines of one chain in iptables-save output.
func savedRules(saved, chain string) []string {
	var out []string
	for _, l := range lines(saved) {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			out = append(out, l)
		}
	}
	return out
}

// kernelWorld returns a world whose Proxier programs ns with the real binaries of variant.
func kernelWorld(t testing.TB, ns, variant string, families ...v1.IPFamily) *world {
	t.Helper()
	return kernelWorldConfig(t, Config{Families: families, NetNS: ns, Variant: variant, MasqueradeBit: 14, Detectors: podCIDR4, LocalhostNodePorts: true})
}

// kernelWorldConfig returns a world whose Proxier has cfg (which names the namespace).
func kernelWorldConfig(t testing.TB, cfg Config) *world {
	t.Helper()
	w := &world{t: t, node: endpoints.Node{Name: testNode}}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	w.p = p
	for _, f := range cfg.Families {
		w.trackers = append(w.trackers, proxier.NewTracker(f, testNode))
	}
	return w
}

var variants = []string{VariantLegacy, VariantNFT}

func TestKernelSyncs(t *testing.T) {
	needRoot(t)
	for _, variant := range variants {
		t.Run(variant, func(t *testing.T) {
			// nft syncs are split into chunks of (at most) one port's chains; and the namespace
			// starts with an upstream kube-proxy ruleset (KUBE-SEP chains) to take over.
			setChunkChains(t, 1)
			ns := newTestNetNS(t)
			restoreInNS(t, ns, variant, upstreamRuleset(upstreamShape("a", "172.30.0.1", "10.1.0.7"), upstreamShape("gone", "172.30.0.9", "10.1.0.8")))
			w := kernelWorld(t, ns, variant, v1.IPv4Protocol, v1.IPv6Protocol)
			w.addService(svc("ns", "a", "172.30.0.1", func(s *v1.Service) { s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, 30001 }))
			w.addSlice(slice("ns", "a", "10.1.0.1", "local:10.1.0.2"))
			w.addService(svc("ns", "b", "172.30.0.2", nil))
			w.addService(svc("ns", "c6", "fd00:10:96::3", nil))
			w.addSlice(slice("ns", "c6", "fd00:10::3"))
			w.mustSync(true)

			if v := strings.TrimSpace(inNS(t, ns, "cat", "/proc/sys/"+sysctlRouteLocalnet)); v != "1" {
				t.Errorf("route_localnet = %s in the namespace, want 1 (localhost NodePorts)", v)
			}
			nat := save(t, ns, variant, v1.IPv4Protocol, "nat")
			svcA := chainsFor("ns/a:p80", "tcp")
			for _, want := range []string{":KUBE-SERVICES", ":KUBE-NODEPORTS", ":" + svcA.cluster, ":" + svcA.external,
				"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
				"--to-destination 10.1.0.2:8080", "--dport 30001 -j " + svcA.external} {
				if !strings.Contains(nat, want) {
					t.Errorf("IPv4 nat lacks %q:\n%s", want, nat)
				}
			}
			if got := savedRules(nat, svcA.cluster); len(got) != 3 {
				t.Errorf("%s has %d rules, want 3 (masquerade + 2 endpoints): %q", svcA.cluster, len(got), got)
			}
			if strings.Contains(nat, prefixEndpoint) || strings.Contains(nat, "10.1.0.7") || strings.Contains(nat, "ns/gone") {
				t.Errorf("upstream's KUBE-SEP chains or Services survived the full sync:\n%s", nat)
			}
			if got := savedRules(nat, ChainHairpin); len(got) != 1 || !strings.Contains(got[0], "-s 10.1.0.2/32 -d 10.1.0.2/32") {
				t.Errorf("KUBE-HAIRPIN = %q, want the rule of the local endpoint 10.1.0.2", got)
			}
			filter := save(t, ns, variant, v1.IPv4Protocol, "filter")
			if !strings.Contains(filter, `"ns/b:p80 has no endpoints"`) || !strings.Contains(filter, "-j REJECT") {
				t.Errorf("IPv4 filter lacks the REJECT of ns/b:\n%s", filter)
			}
			if nat6 := save(t, ns, variant, v1.IPv6Protocol, "nat"); !strings.Contains(nat6, "--to-destination [fd00:10::3]:8080") {
				t.Errorf("IPv6 nat lacks the DNAT of ns/c6:\n%s", nat6)
			}

			// Partial syncs: -D/-I of top-level rules and -X of chains must match the kernel.
			w.addSlice(slice("ns", "a", "10.1.0.9"))
			w.addSlice(slice("ns", "b", "10.1.0.5"))
			w.deleteService(svc("ns", "c6", "fd00:10:96::3", nil))
			w.mustSync(false)
			nat, filter = save(t, ns, variant, v1.IPv4Protocol, "nat"), save(t, ns, variant, v1.IPv4Protocol, "filter")
			if strings.Contains(nat, "10.1.0.2:8080") || !strings.Contains(nat, "--to-destination 10.1.0.9:8080") {
				t.Errorf("endpoint change not applied:\n%s", nat)
			}
			if strings.Contains(filter, "ns/b:p80 has no endpoints") || !strings.Contains(nat, "--to-destination 10.1.0.5:8080") {
				t.Errorf("ns/b did not move from REJECT to DNAT:\nfilter:\n%s\nnat:\n%s", filter, nat)
			}
			if last := savedRules(nat, ChainServices); len(last) == 0 || !strings.Contains(last[len(last)-1], "-j KUBE-NODEPORTS") {
				t.Errorf("the NodePort jump is not last in KUBE-SERVICES: %q", last)
			}
			if nat6 := save(t, ns, variant, v1.IPv6Protocol, "nat"); strings.Contains(nat6, "KUBE-SVC-") || strings.Contains(nat6, "fd00:10::3") {
				t.Errorf("deleted IPv6 service left rules:\n%s", nat6)
			}
		})
	}
}

func TestKernelCanaryAndCleanup(t *testing.T) {
	needRoot(t)
	for _, variant := range variants {
		t.Run(variant, func(t *testing.T) {
			ns := newTestNetNS(t)
			lost := make(chan struct{}, 16)
			p, err := New(Config{Families: []v1.IPFamily{v1.IPv4Protocol}, NetNS: ns, Variant: variant, MasqueradeBit: 14,
				SyncPeriod: 50 * time.Millisecond, OnCanaryLost: func() { lost <- struct{}{} }})
			if err != nil {
				t.Fatal(err)
			}
			w := &world{t: t, p: p, node: endpoints.Node{Name: testNode}, trackers: []*proxier.Tracker{proxier.NewTracker(v1.IPv4Protocol, testNode)}}
			w.addService(svc("ns", "a", "172.30.0.1", nil))
			w.addSlice(slice("ns", "a", "10.1.0.1"))
			w.mustSync(true)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { p.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			waitFor(t, "canaries created", func() bool {
				for _, table := range []string{"mangle", "nat", "filter"} {
					if !strings.Contains(save(t, ns, variant, v1.IPv4Protocol, table), "nodeproxy canary") {
						return false
					}
				}
				return true
			})

			// An external flush (-F only: chains stay) is noticed thanks to the marker rules.
			bin := "iptables-" + variant
			for _, table := range []string{"mangle", "nat", "filter"} {
				inNS(t, ns, bin, "-w", "5", "-t", table, "-F")
			}
			select {
			case <-lost:
			case <-time.After(10 * time.Second):
				t.Fatalf("flush not noticed: OnCanaryLost not called")
			}
			w.mustSync(false) // partial by request, full because the canary was lost
			if nat := save(t, ns, variant, v1.IPv4Protocol, "nat"); !strings.Contains(nat, "--to-destination 10.1.0.1:8080") ||
				!strings.Contains(nat, "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES") {
				t.Errorf("rules not repaired after the flush:\n%s", nat)
			}
			cancel()
			<-done
			if mangle := save(t, ns, variant, v1.IPv4Protocol, "mangle"); strings.Contains(mangle, ChainCanary) {
				t.Errorf("canary left after Run returned:\n%s", mangle)
			}
			checkCleanup(t, ns, variant)
		})
	}
}

// checkCleanup adds kubelet's KUBE-FIREWALL and a foreign chain, runs Cleanup and checks
// that only those are left.
func checkCleanup(t *testing.T, ns, variant string) {
	t.Helper()
	bin := "iptables-" + variant
	inNS(t, ns, bin, "-w", "5", "-N", ChainKubeletFirewall)
	inNS(t, ns, bin, "-w", "5", "-A", ChainKubeletFirewall, "-j", "RETURN")
	inNS(t, ns, bin, "-w", "5", "-I", "INPUT", "-j", ChainKubeletFirewall)
	inNS(t, ns, bin, "-w", "5", "-t", "nat", "-N", "CNI-OTHER")
	if err := Cleanup(ns); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	for _, table := range []string{"nat", "filter", "mangle"} {
		for _, l := range lines(save(t, ns, variant, v1.IPv4Protocol, table)) {
			if strings.Contains(l, "KUBE-") && !strings.Contains(l, ChainKubeletFirewall) {
				t.Errorf("Cleanup left %s: %s", table, l)
			}
		}
	}
	filter := save(t, ns, variant, v1.IPv4Protocol, "filter")
	if !strings.Contains(filter, "-A INPUT -j KUBE-FIREWALL") || !strings.Contains(filter, "-A KUBE-FIREWALL -j RETURN") {
		t.Errorf("Cleanup removed kubelet's KUBE-FIREWALL:\n%s", filter)
	}
	if !strings.Contains(save(t, ns, variant, v1.IPv4Protocol, "nat"), ":CNI-OTHER") {
		t.Errorf("Cleanup removed a foreign chain")
	}
}

// waitFor polls cond for up to 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for: %s", what)
}

func TestKernelDetectVariant(t *testing.T) {
	needRoot(t)
	ns := newTestNetNS(t)
	check := func(want string) {
		t.Helper()
		got, err := DetectVariant(ns)
		if err != nil || got != want {
			t.Errorf("DetectVariant = %q, %v; want %q", got, err, want)
		}
	}
	check(VariantNFT) // nothing anywhere: nft
	for i := range 3 {
		inNS(t, ns, "iptables-legacy", "-w", "5", "-A", "INPUT", "-s", fmt.Sprintf("192.0.2.%d", i+1), "-j", "ACCEPT")
	}
	check(VariantLegacy) // more legacy rules
	inNS(t, ns, "ip6tables-nft", "-w", "5", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
	check(VariantNFT) // kubelet's hint wins
	if _, err := New(Config{Families: []v1.IPFamily{v1.IPv4Protocol}, NetNS: ns}); err != nil {
		t.Errorf("New with detection: %v", err)
	}
}
