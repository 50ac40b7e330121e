package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/nftables"
	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/proxiertest"
)

// traceRun is the outcome of one runTrace call.
type traceRun struct {
	code           int
	stdout, stderr string
}

func runTraceArgs(args ...string) traceRun {
	var stdout, stderr bytes.Buffer
	code := runTrace(context.Background(), args, &stdout, &stderr)
	return traceRun{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// TestTraceBadInput: invalid flags are one line on stderr and exit code 1, before any kernel
// access.
func TestTraceBadInput(t *testing.T) {
	notNetns := filepath.Join(t.TempDir(), "plain-file")
	if err := os.WriteFile(notNetns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ok := []string{"--src", "10.244.1.5", "--dst", "10.96.0.10", "--port", "80"}
	with := func(extra ...string) []string { return append(append([]string(nil), ok...), extra...) }
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no flags", nil, "--src is required"},
		{"no destination", []string{"--src", "10.0.0.1", "--port", "80"}, "--dst is required"},
		{"bad source", []string{"--src", "10.0.0.300", "--dst", "10.96.0.10", "--port", "80"}, `--src "10.0.0.300" is not an IP address`},
		{"source with prefix", []string{"--src", "10.0.0.1/24", "--dst", "10.96.0.10", "--port", "80"}, "is not an IP address"},
		{"unspecified destination", []string{"--src", "10.0.0.1", "--dst", "0.0.0.0", "--port", "80"}, "--dst 0.0.0.0 is not a unicast address"},
		{"multicast destination", []string{"--src", "10.0.0.1", "--dst", "ff02::1", "--port", "80"}, "not a unicast address"},
		{"mixed families", []string{"--src", "10.0.0.1", "--dst", "fd00::1", "--port", "80"}, "different IP families"},
		{"no port", []string{"--src", "10.0.0.1", "--dst", "10.96.0.10"}, "--port 0: want a port in 1-65535"},
		{"port too large", with("--port", "65536"), "--port 65536"},
		{"port not a number", with("--port", "http"), "parsing flags"},
		{"bad protocol", with("--proto", "icmp"), `--proto "icmp": want tcp, udp or sctp`},
		{"bad from", with("--from", "elsewhere"), `--from "elsewhere": want pod, node or outside`},
		{"interface name too long", with("--iif", "abcdefghijklmnopq"), "is not an interface name"},
		{"interface name with a slash", with("--iif", "eth0/1"), "is not an interface name"},
		{"interface for node traffic", with("--from", "node", "--iif", "eth0"), "--iif does not apply to --from node"},
		{"unknown flag", with("--mode", "nftables"), "unknown flag: --mode"},
		{"positional argument", with("extra"), `takes no arguments, got ["extra"]`},
		{"missing namespace", with("--netns", "/nonexistent/netns"), "opening network namespace /nonexistent/netns"},
		{"not a namespace", with("--netns", notNetns), "is not a network namespace"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := runTraceArgs(tc.args...)
			if got.code != 1 || got.stdout != "" {
				t.Errorf("exit %d, stdout %q; want exit 1 and no output", got.code, got.stdout)
			}
			if !strings.HasPrefix(got.stderr, "proxy trace: ") || strings.Count(got.stderr, "\n") != 1 || !strings.Contains(got.stderr, tc.want) {
				t.Errorf("stderr %q, want one line \"proxy trace: ...%s...\"", got.stderr, tc.want)
			}
		})
	}
}

// TestTraceHelpAndDispatch: --help prints the usage; Main hands "trace" to runTrace.
func TestTraceHelpAndDispatch(t *testing.T) {
	if got := runTraceArgs("--help"); got.code != 0 || !strings.Contains(got.stdout, "proxy trace --src IP --dst IP") || !strings.Contains(got.stdout, "--netns") {
		t.Errorf("--help: exit %d, stdout %q", got.code, got.stdout)
	}
	res := runMain(t, "trace", "--src", "10.0.0.1")
	if res.code != 1 || res.cfg != nil || !strings.HasPrefix(res.stderr, "proxy trace: --dst is required") {
		t.Errorf("Main trace: exit %d, run called %t, stderr %q", res.code, res.cfg != nil, res.stderr)
	}
}

// traceNetns is a named network namespace holding node-a of the packet-flow World, programmed
// by the nftables Proxier.
type traceNetns struct {
	name   string
	handle netns.NsHandle
}

// path is the namespace's bind mount, for --netns.
func (n *traceNetns) path() string { return "/var/run/netns/" + n.name }

// newTraceNetns creates a named network namespace with node-a's lan address on a dummy
// interface (skipping unless root) and removes it when the test ends.
func newTraceNetns(t *testing.T) *traceNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and programs nftables in it")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("getting the current network namespace: %v", err)
	}
	defer orig.Close()
	name := fmt.Sprintf("np-trace-%d-%d", os.Getpid(), rand.IntN(1<<30))
	h, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("creating network namespace %s: %v", name, err)
	}
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // stuck in the new namespace: never unlock, the thread is discarded
		t.Fatalf("returning to the original network namespace: %v", err)
	}
	n := &traceNetns{name: name, handle: h}
	t.Cleanup(func() {
		_ = n.handle.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting network namespace %s: %v", name, err)
		}
	})
	return n
}

// addNodeAddress puts ip/bits on the namespace's loopback interface (a local address like
// any other for the rules; the kernel here has no dummy interfaces).
func (n *traceNetns) addNodeAddress(t *testing.T, ip string, bits int) {
	t.Helper()
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("finding lo: %v", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(ip), Mask: net.CIDRMask(bits, 32)}}
	if err := h.AddrAdd(lo, addr); err != nil {
		t.Fatalf("adding %s: %v", ip, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
}

// programWorld programs the IPv4 packet-flow World into the namespace with the Proxier.
func (n *traceNetns) programWorld(t *testing.T) {
	t.Helper()
	cfg := proxiertest.NewConfig(v1.IPv4Protocol)
	p, err := nftables.New(nftables.Config{
		Families:          []v1.IPFamily{v1.IPv4Protocol},
		NodeIPs:           []netip.Addr{cfg.NodeIP},
		Detectors:         map[v1.IPFamily]proxier.LocalDetector{v1.IPv4Protocol: {Mode: proxier.LocalModeClusterCIDR, CIDR: cfg.ClusterCIDR}},
		NodePortAddresses: map[v1.IPFamily][]netip.Prefix{v1.IPv4Protocol: cfg.NodePortAddresses},
		ServiceCIDRs:      []netip.Prefix{cfg.ServiceCIDR},
		MasqueradeBit:     cfg.MasqueradeBit,
		NetNSFd:           int(n.handle),
	})
	if err != nil {
		t.Fatal(err)
	}
	core, err := proxier.NewCore(proxier.CoreConfig{NodeName: cfg.NodeName, Families: []v1.IPFamily{v1.IPv4Protocol}, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second}, p)
	if err != nil {
		t.Fatal(err)
	}
	w := proxiertest.World(v1.IPv4Protocol)
	core.OnNodeAdd(w.Node)
	for _, svc := range w.Services {
		core.OnServiceAdd(svc)
	}
	for _, s := range w.Slices {
		core.OnEndpointSliceAdd(s)
	}
	core.OnServiceSynced()
	core.OnEndpointSlicesSynced()
	if err := core.SyncNow(context.Background()); err != nil {
		t.Fatalf("syncing the World: %v", err)
	}
}

// TestTraceKernel runs `proxy trace` against node-a of the packet-flow World programmed into
// a namespace: a reach, a reject, a drop, a NodePort from the node, no match, and --json.
func TestTraceKernel(t *testing.T) {
	ns := newTraceNetns(t)
	ns.addNodeAddress(t, "192.0.2.11", 24)
	ns.programWorld(t)
	at := func(args ...string) []string { return append([]string{"--netns", ns.path()}, args...) }
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"reach", at("--src", "10.244.1.200", "--dst", "10.96.0.10", "--proto", "tcp", "--port", "80"),
			"10.244.1.200 (pod) -> 10.96.0.10:80/tcp: Service test/plain:http (ClusterIP)\n" +
				"  candidates (2): 10.244.1.10:8080 10.244.2.10:8080\n" +
				"  masquerade: no (source is in the pod CIDR 10.244.0.0/16)\n"},
		{"reject", at("--src", "10.244.1.200", "--dst", "10.96.0.24", "--port", "80"),
			"10.244.1.200 (pod) -> 10.96.0.24:80/tcp: Service test/no-endpoints:http (ClusterIP)\n" +
				"  verdict: reject (Service test/no-endpoints:http has no endpoints)\n"},
		{"drop", at("--src", "192.0.2.100", "--dst", "192.0.2.11", "--port", "30017", "--from", "outside"),
			"192.0.2.100 (outside) -> 192.0.2.11:30017/tcp: Service test/nodeport-local-remote:http (NodePort, externalTrafficPolicy Local)\n" +
				"  verdict: drop (externalTrafficPolicy Local and no local endpoints)\n"},
		{"NodePort from the node", at("--src", "192.0.2.11", "--dst", "192.0.2.11", "--port", "30014"),
			"192.0.2.11 (node) -> 192.0.2.11:30014/tcp: Service test/nodeport:http (NodePort)\n" +
				"  candidates (2): 10.244.1.14:8080 10.244.2.14:8080\n" +
				"  masquerade: yes (externalTrafficPolicy Cluster: external traffic is masqueraded)\n"},
		{"unknown port of a ClusterIP", at("--src", "10.244.1.200", "--dst", "10.96.0.10", "--proto", "udp", "--port", "80"),
			"10.244.1.200 (pod) -> 10.96.0.10:80/udp: no Service\n" +
				"  verdict: reject (10.96.0.10 is a ClusterIP, but no Service port 80/udp is defined on it (ports: 80/tcp))\n"},
		{"no match", at("--src", "10.244.1.200", "--dst", "8.8.8.8", "--proto", "udp", "--port", "53"),
			"10.244.1.200 (pod) -> 8.8.8.8:53/udp: not a Service address: no nodeproxy rule matches\n"},
		{"pod that the rules do not see as one", at("--src", "192.0.2.100", "--dst", "10.96.0.10", "--port", "80", "--from", "pod"),
			"192.0.2.100 (pod) -> 10.96.0.10:80/tcp: Service test/plain:http (ClusterIP)\n" +
				"  note: the rules see local pods by source address in 10.244.0.0/16; 192.0.2.100 is not in it\n" +
				"  candidates (2): 10.244.1.10:8080 10.244.2.10:8080\n" +
				"  masquerade: yes (source is not in the pod CIDR 10.244.0.0/16)\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := runTraceArgs(tc.args...)
			if got.code != 0 || got.stderr != "" || got.stdout != tc.want {
				t.Errorf("exit %d, stderr %q, stdout:\n%s\nwant:\n%s", got.code, got.stderr, got.stdout, tc.want)
			}
			t.Logf("proxy trace %s\n%s", strings.Join(tc.args, " "), got.stdout)
		})
	}
	t.Run("json", func(t *testing.T) {
		got := runTraceArgs(at("--src", "192.0.2.100", "--dst", "203.0.113.17", "--port", "80", "--json")...)
		var rep traceReport
		if err := json.Unmarshal([]byte(got.stdout), &rep); err != nil || got.code != 0 {
			t.Fatalf("exit %d, stderr %q, stdout %q: %v", got.code, got.stderr, got.stdout, err)
		}
		want := traceReport{Source: "192.0.2.100", From: "outside", FromGuessed: true, Destination: "203.0.113.17:80", Protocol: "tcp",
			Outcome: "reach", Service: "test/lb:http", Frontend: nftables.FrontendLoadBalancer,
			Candidates: []string{"10.244.1.17:8080", "10.244.2.17:8080"}, Masquerade: true,
			MasqueradeReason: "externalTrafficPolicy Cluster: external traffic is masqueraded"}
		if fmt.Sprintf("%+v", rep) != fmt.Sprintf("%+v", want) {
			t.Errorf("got  %+v\nwant %+v", rep, want)
		}
	})
}

// TestTraceKernelNoTable: a namespace without nodeproxy's tables is a one-line error.
func TestTraceKernelNoTable(t *testing.T) {
	ns := newTraceNetns(t)
	got := runTraceArgs("--netns", ns.path(), "--src", "10.0.0.1", "--dst", "10.96.0.10", "--port", "80")
	if got.code != 1 || got.stderr != "proxy trace: reading the nftables rules: no nodeproxy table (is nodeproxy running with --mode=nftables?)\n" {
		t.Errorf("exit %d, stderr %q", got.code, got.stderr)
	}
}
