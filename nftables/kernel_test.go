package nftables

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/proxier/proxiertest"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/")

// newKernelEnv returns a test environment whose Proxier programs a fresh network namespace.
// Its transactions are recorded in env.rec.
func newKernelEnv(t *testing.T, cfg Config) (*testEnv, *testNetns) {
	t.Helper()
	ns := newTestNetns(t)
	cfg.NetNSFd = ns.fd()
	env := newTestEnv(t, cfg)
	env.rec = &recordingConn{conn: NewNetlinkConn(ns.fd())}
	p, err := NewWithConn(cfg, env.rec)
	if err != nil {
		t.Fatalf("NewWithConn: %v", err)
	}
	env.p = p
	return env, ns
}

// recordingConn remembers the last transaction it applied.
type recordingConn struct {
	conn Conn
	last *Transaction
}

func (c *recordingConn) Apply(tx *Transaction) error {
	c.last = tx
	return c.conn.Apply(tx)
}

// ApplyStaged passes staging on to the recorded Conn when it can stage.
func (c *recordingConn) ApplyStaged(tx *Transaction) (bool, error) {
	s, ok := c.conn.(stager)
	if !ok {
		return false, nil
	}
	c.last = tx
	return s.ApplyStaged(tx)
}

// checkGolden compares got with testdata/name (or rewrites it with -update).
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("`nft list ruleset` differs from %s (run with -update after checking):%s", path,
			diffLines(strings.Split(got, "\n"), strings.Split(string(want), "\n")))
	}
}

// TestKernelGolden programs representative states into a fresh namespace and compares
// `nft list ruleset` with checked-in golden files.
func TestKernelGolden(t *testing.T) {
	t.Run("ipv4-world", func(t *testing.T) {
		env, ns := newKernelEnv(t, testConfig())
		addWorld(env)
		env.sync(true)
		checkGolden(t, "ipv4-world.golden", ns.nft(t, "list", "ruleset"))
	})
	t.Run("ipv4-incremental", func(t *testing.T) {
		env, ns := newKernelEnv(t, testConfig())
		addWorld(env)
		env.sync(true)
		applyChanges(env)
		env.sync(false)
		checkGolden(t, "ipv4-incremental.golden", ns.nft(t, "list", "ruleset"))
	})
	t.Run("ipv6-packet-flow-world", func(t *testing.T) {
		ns := newTestNetns(t)
		cfg := proxiertest.NewConfig(v1.IPv6Protocol)
		p, err := New(worldConfig(cfg, ns.fd()))
		if err != nil {
			t.Fatal(err)
		}
		syncWorld(t, cfg, p)
		checkGolden(t, "ipv6-world.golden", ns.nft(t, "list", "ruleset"))
	})
}

// applyChanges changes addWorld's Services: an endpoint goes, a Service goes, one arrives
// with new endpoint counts and affinity, and a LoadBalancer changes its source ranges.
func applyChanges(env *testEnv) {
	env.add(makeService("plain", "172.30.0.1"), makeSlice("plain", ep{ip: "10.0.2.1"}))
	env.tracker.UpdateService(makeService("aff", "172.30.0.7", withAffinity(60)), nil)
	env.add(makeService("new", "172.30.0.10", withAffinity(120), withNodePort(30010), withETPLocal),
		makeSlice("new", ep{ip: "10.0.1.3"}, ep{ip: "10.0.2.3"}, ep{ip: "10.0.2.4"}))
	env.add(makeService("lb", "172.30.0.5", withNodePort(30005), withLB("5.6.7.8"), withSourceRanges("203.0.113.0/24", "192.168.0.0/16")),
		makeSlice("lb", ep{ip: "10.0.2.1"}))
}

// slotSetTypeof declares the slot maps and sets with `typeof`, so that `nft -f` accepts
// numgen in their keys (the kernel state is the same; only the printed key type differs).
var slotSetTypeof = map[string]string{
	"vip-endpoints":            "typeof IP daddr . meta l4proto . th dport . numgen random mod 1 : IP daddr . th dport",
	"vip-local-endpoints":      "typeof IP daddr . meta l4proto . th dport . numgen random mod 1 : IP daddr . th dport",
	"nodeport-endpoints":       "typeof meta l4proto . th dport . numgen random mod 1 : IP daddr . th dport",
	"nodeport-local-endpoints": "typeof meta l4proto . th dport . numgen random mod 1 : IP daddr . th dport",
	"vip-affinity":             "typeof IP saddr . IP daddr . meta l4proto . th dport . numgen random mod 1",
	"vip-local-affinity":       "typeof IP saddr . IP daddr . meta l4proto . th dport . numgen random mod 1",
	"nodeport-affinity":        "typeof IP saddr . meta l4proto . th dport . numgen random mod 1",
	"nodeport-local-affinity":  "typeof IP saddr . meta l4proto . th dport . numgen random mod 1",
}

// loadableRuleset rewrites a `nft list ruleset` of nodeproxy's tables so that `nft -f` loads it.
func loadableRuleset(listing string) string {
	var out []string
	kw, set := "ip", ""
	for _, line := range strings.Split(listing, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "table "):
			kw = strings.Fields(trimmed)[1]
		case strings.HasPrefix(trimmed, "set "), strings.HasPrefix(trimmed, "map "):
			set = strings.Fields(trimmed)[1]
		case strings.HasPrefix(trimmed, "type ") && slotSetTypeof[set] != "" && strings.Contains(trimmed, "mark"):
			line = "\t\t" + strings.ReplaceAll(slotSetTypeof[set], "IP", kw)
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

var ruleHandle = regexp.MustCompile(`^((?:ip|ip6) \S+ \S+)( \d+)+$`)

// netlinkDump returns `nft --debug=netlink list ruleset`: every rule's expressions and every
// element's bytes as the kernel holds them, without rule handles and with elements sorted.
func netlinkDump(t *testing.T, ns *testNetns) []string {
	t.Helper()
	cmd := []string{"--debug=netlink", "list", "ruleset"}
	out, err := ns.tryNFT(cmd...)
	if err != nil {
		t.Fatalf("nft %s: %v", strings.Join(cmd, " "), err)
	}
	var blocks []string
	var cur []string
	flush := func() {
		if len(cur) > 0 {
			head, body := cur[0], cur[1:]
			if strings.HasPrefix(strings.TrimSpace(strings.Join(body, "")), "element") {
				sort.Strings(body)
			}
			blocks = append(blocks, head+"\n"+strings.Join(body, "\n"))
		}
		cur = nil
	}
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "ip nodeproxy") || strings.HasPrefix(line, "ip6 nodeproxy"):
			flush()
			cur = []string{ruleHandle.ReplaceAllString(line, "$1")}
		case strings.HasPrefix(line, "table "):
			flush()
		case strings.TrimSpace(line) != "" && cur != nil:
			cur = append(cur, strings.ReplaceAll(strings.TrimSpace(line), "\t", " "))
		}
	}
	flush()
	return blocks
}

// TestKernelEncodingMatchesNFT proves that the netlink encoding is what nft would generate:
// the rulesets nodeproxy programs (IPv4 after incremental changes, the IPv6 packet-flow World)
// are listed, loaded into a second namespace with the nft CLI, and both namespaces'
// netlink-level dumps (rule expressions, element bytes) must match.
func TestKernelEncodingMatchesNFT(t *testing.T) {
	cfg := testConfig()
	cfg.NodePortAddresses = map[v1.IPFamily][]netip.Prefix{v1.IPv4Protocol: {
		netip.MustParsePrefix("192.168.0.0/24"), netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("0.0.0.0/1")}}
	env, ours := newKernelEnv(t, cfg)
	addWorld(env)
	env.sync(true)
	applyChanges(env)
	env.sync(false)
	cfg6 := proxiertest.NewConfig(v1.IPv6Protocol)
	p6, err := New(worldConfig(cfg6, ours.fd()))
	if err != nil {
		t.Fatal(err)
	}
	syncWorld(t, cfg6, p6)
	theirs := newTestNetns(t)
	theirs.nftScript(t, loadableRuleset(ours.nft(t, "list", "ruleset")))
	got, want := netlinkDump(t, ours), netlinkDump(t, theirs)
	if len(got) < 100 {
		t.Fatalf("only %d objects in the netlink dump:\n%s", len(got), strings.Join(got, "\n"))
	}
	if !slices.Equal(got, want) {
		t.Errorf("netlink encoding differs from nft's (missing: nft's form, unexpected: ours):%s", diffLines(got, want))
	}
}
