package cluster

import (
	"bufio"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/client-go/tools/clientcmd"
)

// requireRoot skips tests that create namespaces unless they can.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip command")
	}
}

// newTestRun makes a run ID of the real form and removes its processes and namespaces at the
// end of the test, whatever happened.
func newTestRun(t *testing.T) (topology, *processSet) {
	t.Helper()
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	runID := fmt.Sprintf("%s%d-%s", runIDPrefix, os.Getpid(), hex.EncodeToString(suffix))
	tp := topology{runID: runID}
	processes := &processSet{runID: runID, logDir: t.TempDir(), grace: 500 * time.Millisecond}
	t.Cleanup(func() {
		_ = processes.stopAll()
		_ = tp.destroy()
	})
	return tp, processes
}

func TestTopologyConnectsMembersAndRoutesServiceRanges(t *testing.T) {
	requireRoot(t)
	tp, _ := newTestRun(t)
	if err := tp.create(); err != nil {
		t.Fatal(err)
	}

	// A TCP server on node-a's lan address sees a client from ext with ext's own address.
	var listener net.Listener
	err := inNamespace(tp.ns(NodeA), func() (err error) {
		listener, err = net.Listen("tcp", NodeAIP+":0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	peer := make(chan string, 1)
	go func() {
		conn, err := listener.Accept()
		if err != nil {
			peer <- err.Error()
			return
		}
		defer conn.Close()
		line, _ := bufio.NewReader(conn).ReadString('\n')
		fmt.Fprintf(conn, "%s %s", conn.RemoteAddr().(*net.TCPAddr).IP, line)
	}()
	conn, err := dialContext(t.Context(), tp.ns(External), "tcp", listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "hello\n")
	answer, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := ExternalIP + " hello\n"; string(answer) != want {
		t.Errorf("ext -> node-a answered %q, want %q", answer, want)
	}

	wantRoutes := map[string]map[string]string{
		External: {ServiceCIDR: NodeAIP, LoadBalancerCIDR: NodeAIP},
		NodeA:    {NodeBPodCIDR: NodeBIP, "0.0.0.0/0": ControlPlaneIP},
		NodeB:    {NodeAPodCIDR: NodeAIP, "0.0.0.0/0": ControlPlaneIP},
	}
	for member, want := range wantRoutes {
		if got := gatewayRoutes(t, tp.ns(member)); !equalMaps(got, want) {
			t.Errorf("routes via a gateway in %s = %v, want %v", member, got, want)
		}
	}
	for member, want := range map[string]string{NodeA: "1", NodeB: "1", External: "0"} {
		var got []byte
		err := inNamespace(tp.ns(member), func() (err error) {
			got, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
			return err
		})
		if err != nil || strings.TrimSpace(string(got)) != want {
			t.Errorf("ip_forward in %s = %q (%v), want %s", member, got, err, want)
		}
	}
}

// gatewayRoutes lists a namespace's IPv4 routes that have a gateway: destination -> gateway.
func gatewayRoutes(t *testing.T, ns string) map[string]string {
	t.Helper()
	h, err := openHandle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("listing routes in %s: %v", ns, err)
	}
	got := map[string]string{}
	for _, r := range routes {
		if r.Gw != nil && r.Dst != nil {
			got[r.Dst.String()] = r.Gw.String()
		}
	}
	return got
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestLeakCheckSeesLeftoversAndTeardownRemovesThem proves both directions: while a run's
// namespaces and processes (including one that ignores SIGTERM and one that left the process
// group) exist, Leaks reports them; after stopAll and destroy it reports nothing.
func TestLeakCheckSeesLeftoversAndTeardownRemovesThem(t *testing.T) {
	requireRoot(t)
	tp, processes := newTestRun(t)
	if err := tp.create(); err != nil {
		t.Fatal(err)
	}
	if _, err := processes.start(tp.ns(NodeA), "stubborn", "sh", "-c", `trap "" TERM; sleep 300 & wait`); err != nil {
		t.Fatal(err)
	}
	if _, err := processes.start(tp.ns(NodeB), "escapee", "sh", "-c", "setsid sleep 300 & exec sleep 300"); err != nil {
		t.Fatal(err)
	}
	var leaks []string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		if leaks, err = Leaks(tp.runID); err != nil {
			t.Fatal(err)
		}
		if countPrefix(leaks, "process ") >= 4 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := countPrefix(leaks, "network namespace "); got != len(members)+1 {
		t.Errorf("Leaks before teardown found %d namespaces, want %d: %v", got, len(members)+1, leaks)
	}
	if got := countPrefix(leaks, "process "); got < 4 {
		t.Errorf("Leaks before teardown found %d processes, want at least 4 (2 shells, 2 sleeps): %v", got, leaks)
	}

	if err := processes.stopAll(); err != nil {
		t.Errorf("stopping processes: %v", err)
	}
	if err := tp.destroy(); err != nil {
		t.Errorf("destroying the topology: %v", err)
	}
	if _, err := processes.start(tp.ns(NodeA), "late", "true"); err == nil {
		t.Errorf("starting a process after stopAll succeeded, want an error")
	}
	if leaks, err := Leaks(tp.runID); err != nil || len(leaks) != 0 {
		t.Errorf("Leaks after teardown = %v, %v; want none", leaks, err)
	}
}

func countPrefix(items []string, prefix string) int {
	n := 0
	for _, item := range items {
		if strings.HasPrefix(item, prefix) {
			n++
		}
	}
	return n
}

func TestProcessLogsAndStop(t *testing.T) {
	requireRoot(t)
	tp, processes := newTestRun(t)
	if err := addNamespace(tp.ns(NodeA)); err != nil {
		t.Fatal(err)
	}
	p, err := processes.start(tp.ns(NodeA), "echo", "sh", "-c", `echo "marker=$`+RunEnv+`"; exec sleep 300`)
	if err != nil {
		t.Fatal(err)
	}
	want := "marker=" + tp.runID
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.LogTail(5), want) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if tail := p.LogTail(5); !strings.Contains(tail, want) {
		t.Errorf("log tail %q does not contain %q", tail, want)
	}
	if exited, _ := p.Exited(); exited {
		t.Fatalf("process exited early: %s", p.LogTail(5))
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if exited, _ := p.Exited(); !exited {
		t.Errorf("process still running after Stop")
	}
}

func TestRunIDOfAndOwnerAlive(t *testing.T) {
	for name, want := range map[string]string{
		"npe2e-123-abcdef-node-a":    "npe2e-123-abcdef",
		"npe2e-123-abcdef-pod-x-y-z": "npe2e-123-abcdef",
		"npe2e-123-abcdef":           "npe2e-123-abcdef",
		"np-123-abcd-node-a":         "",
		"npe2e-":                     "",
	} {
		got, ok := runIDOf(name)
		if got != want || ok != (want != "") {
			t.Errorf("runIDOf(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
	if !ownerAlive(fmt.Sprintf("%s%d-abc", runIDPrefix, os.Getpid())) {
		t.Errorf("ownerAlive says this test binary is dead")
	}
	if !ownerAlive(runIDPrefix + "notapid-abc") {
		t.Errorf("ownerAlive must treat unparsable IDs as alive so they are never reaped")
	}
	if ownerAlive(fmt.Sprintf("%s%d-abc", runIDPrefix, 1<<30)) {
		t.Errorf("ownerAlive says a PID beyond pid_max is alive")
	}
}

func TestPKIChainsAndKubeconfig(t *testing.T) {
	dir := t.TempDir()
	p, err := generatePKI(dir, []net.IP{net.ParseIP(ControlPlaneIP), net.ParseIP(KubernetesIP)})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(p.CACertPEM) {
		t.Fatal("CA certificate does not parse")
	}
	serving := readCert(t, p.ServingCert)
	for _, name := range []string{ControlPlaneIP, KubernetesIP, "kubernetes.default.svc"} {
		if _, err := serving.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("serving certificate not valid for %s: %v", name, err)
		}
	}
	if _, err := serving.Verify(x509.VerifyOptions{Roots: roots, DNSName: "192.0.2.99"}); err == nil {
		t.Errorf("serving certificate valid for an address it should not name")
	}
	admin := readCert(t, p.AdminCert)
	_, err = admin.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Errorf("admin certificate is not a client certificate of the CA: %v", err)
	}
	if got := admin.Subject.Organization; len(got) != 1 || got[0] != "system:masters" {
		t.Errorf("admin certificate groups = %v, want [system:masters]", got)
	}

	path := filepath.Join(dir, "admin.kubeconfig")
	if err := p.writeKubeconfig(path, "https://192.0.2.1:6443"); err != nil {
		t.Fatal(err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if config.Host != "https://192.0.2.1:6443" || len(config.CertData) == 0 || len(config.KeyData) == 0 || len(config.CAData) == 0 {
		t.Errorf("kubeconfig gives host %q and cert/key/CA of %d/%d/%d bytes", config.Host, len(config.CertData), len(config.KeyData), len(config.CAData))
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
