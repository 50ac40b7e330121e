package pods

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodeproxy/nodeproxy/podagent/serve"
)

// serveEnv makes the test binary act as `podagent serve --tcp=8080 --udp=8080`, or with
// arguments "dial ADDR" as a probe command that succeeds when ADDR accepts TCP.
const serveEnv = "PODAGENT_TEST_SERVE"

func TestMain(m *testing.M) {
	if os.Getenv(serveEnv) == "" {
		os.Exit(m.Run())
	}
	if len(os.Args) == 3 && os.Args[1] == "dial" {
		conn, err := net.DialTimeout("tcp", os.Args[2], time.Second)
		if err != nil {
			os.Exit(1)
		}
		_ = conn.Close()
		os.Exit(0)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	code, err := serve.Run(ctx, serve.Config{Name: serve.PodName(), TCPPorts: []int{8080}, UDPPorts: []int{8080}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// inNetns runs fn on a thread in ns; the thread is discarded afterwards.
func inNetns(t *testing.T, ns netns.NsHandle, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

// newNodeNetns creates a throwaway unnamed namespace standing for the node's.
func newNodeNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	nsCh := make(chan netns.NsHandle, 1)
	errCh := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		ns, err := netns.New()
		if err != nil {
			errCh <- err
			return
		}
		nsCh <- ns
	}()
	select {
	case err := <-errCh:
		t.Fatalf("creating node namespace: %v", err)
	case ns := <-nsCh:
		t.Cleanup(func() { _ = ns.Close() })
		return ns
	}
	return netns.None()
}

// echo dials addr from ns over network and returns the first line of the answer.
func echo(t *testing.T, ns netns.NsHandle, network, addr string) string {
	t.Helper()
	var line string
	err := inNetns(t, ns, func() error {
		conn, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if network == "udp" {
			if _, err := conn.Write([]byte("hi")); err != nil {
				return err
			}
		}
		line, err = bufio.NewReader(conn).ReadString('\n')
		return err
	})
	if err != nil {
		t.Fatalf("%s echo from %s: %v", network, addr, err)
	}
	return strings.TrimSpace(line)
}

func markedProcesses(sandbox string) []string {
	var out []string
	files, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), SandboxEnv+"="+sandbox+"\x00") {
			out = append(out, f)
		}
	}
	return out
}

func TestRealPodServesEchoFromItsNamespace(t *testing.T) {
	nodeNS := newNodeNetns(t)
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.99.1.0/24"), netip.MustParsePrefix("fd00:99:1::/64")}
	rt, err := NewNetnsRuntime(nodeNS, "cbr0", cidrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close() })

	pod := newPod("echo", v1.Container{
		Name: "serve", Command: []string{os.Args[0]},
		Env: []v1.EnvVar{
			{Name: serveEnv, Value: "1"},
			// A race-enabled binary otherwise sleeps 1 s at exit, longer than the probe timeout.
			{Name: "GORACE", Value: "atexit_sleep_ms=0"},
			{Name: "POD_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		},
		ReadinessProbe: &v1.Probe{PeriodSeconds: 1, ProbeHandler: v1.ProbeHandler{Exec: &v1.ExecAction{Command: []string{os.Args[0], "dial", "127.0.0.1:8080"}}}},
	})
	pod.Spec.NodeName = "patest"
	grace := int64(5)
	pod.Spec.TerminationGracePeriodSeconds = &grace
	h := prepareHarness(t, pod)
	logDir := t.TempDir()
	t.Cleanup(func() {
		logs, _ := exec.Command("sh", "-c", "cat "+logDir+"/*").CombinedOutput()
		t.Logf("container logs: %s", logs)
	})
	m, err := NewManager(Config{NodeName: "patest", NodeIPs: []string{"192.168.99.2"}, PodCIDRs: cidrs, Client: h.client, Runtime: rt, LogDir: logDir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	p := h.waitPod("echo", "Ready", isReady)
	sandbox := SandboxName("patest", p.UID)
	if len(p.Status.PodIPs) != 2 {
		t.Fatalf("pod IPs %v, want one per family", p.Status.PodIPs)
	}
	for _, ip := range p.Status.PodIPs {
		gateway := Gateway(cidrs[0]).Addr().String()
		if strings.Contains(ip.IP, ":") {
			gateway = Gateway(cidrs[1]).Addr().String()
		}
		for _, network := range []string{"tcp", "udp"} {
			got := echo(t, nodeNS, network, net.JoinHostPort(ip.IP, "8080"))
			if !strings.HasPrefix(got, "echo "+net.JoinHostPort(gateway, "")) {
				t.Errorf("%s echo from %s answered %q, want the pod name and the bridge address %s", network, ip.IP, got, gateway)
			}
		}
	}

	now := metav1.Now()
	p.DeletionTimestamp = &now
	if _, err := h.client.CoreV1().Pods("default").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod deletion", func() bool { _, err := h.pod("echo"); return apierrors.IsNotFound(err) })
	if _, err := os.Stat(filepath.Join(netnsDir, sandbox)); !os.IsNotExist(err) {
		t.Errorf("namespace %s left behind: %v", sandbox, err)
	}
	if err := inNetns(t, nodeNS, func() error { _, err := netlink.LinkByName(vethName(sandbox)); return err }); err == nil {
		t.Errorf("veth %s left behind", vethName(sandbox))
	}
	if left := markedProcesses(sandbox); len(left) > 0 {
		t.Errorf("processes left behind: %v", left)
	}
}

func TestCleanupRemovesLeftovers(t *testing.T) {
	nodeNS := newNodeNetns(t)
	rt, err := NewNetnsRuntime(nodeNS, "cbr0", []netip.Prefix{netip.MustParsePrefix("10.99.2.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	sandbox := SandboxName("pacleanup", "0badcafe-0000")
	if err := rt.CreateSandbox(sandbox, []netip.Prefix{netip.MustParsePrefix("10.99.2.7/24")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.RemoveSandbox(sandbox) })
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	proc, err := rt.Start(ProcessSpec{Sandbox: sandbox, Argv: []string{sleep, "1000"}, Env: []string{SandboxEnv + "=" + sandbox}})
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan int, 1)
	go func() { exited <- proc.Wait() }()

	if err := inNetns(t, nodeNS, func() error { return Cleanup("pacleanup") }); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-exited:
		if code != 128+int(syscall.SIGKILL) {
			t.Errorf("exit code %d, want SIGKILL's", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("process in the leftover namespace was not killed")
	}
	if _, err := os.Stat(filepath.Join(netnsDir, sandbox)); !os.IsNotExist(err) {
		t.Errorf("namespace left behind: %v", err)
	}
	if err := inNetns(t, nodeNS, func() error { _, err := netlink.LinkByName(vethName(sandbox)); return err }); err == nil {
		t.Error("veth left behind")
	}
}

func TestDefaultPrefixIsTheNamedNamespaceWeRunIn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if got := DefaultPrefix("n1"); got != "n1" {
		t.Errorf("outside a named namespace: %q, want the node name", got)
	}
	var ns netns.NsHandle
	if err := inThread(func() (err error) { ns, err = netns.NewNamed("patest-prefix"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Close(); _ = removeNamedNetns("patest-prefix") })
	var got string
	_ = inNetns(t, ns, func() error { got = DefaultPrefix("n1"); return nil })
	if got != "patest-prefix" {
		t.Errorf("inside patest-prefix: %q", got)
	}
}
