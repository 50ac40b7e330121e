package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

const kubeadmWorld = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.2]
  conditions: {ready: true}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
`

// inNetns runs fn on an OS thread switched into ns; the thread is discarded afterwards.
func inNetns(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(ns); err != nil {
			t.Errorf("entering netns: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// getInNetns GETs url's path from addr inside ns, retrying for up to ~10 s while the proxy
// starts. It dials on the thread that is in ns (an http.Client would dial from another one).
func getInNetns(t *testing.T, ns netns.NsHandle, addr, path string) (code int, body string) {
	t.Helper()
	inNetns(t, ns, func() {
		for range 50 {
			if code, body = getOnce(addr, path); code == 200 {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	return code, body
}

// getOnce sends one HTTP/1.0 GET over a connection dialed on the calling thread.
func getOnce(addr, path string) (int, string) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err.Error()
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// proxyNode is a throwaway network namespace with the proxy binary and a file-source world.
type proxyNode struct {
	name, bin, world string
	ns               netns.NsHandle
}

// newProxyNode builds the binary, writes the world and creates the namespace (all removed at
// the end of the test); it skips without root or iptables.
func newProxyNode(t *testing.T) *proxyNode {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the proxy in its own network namespace")
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("iptables-restore is not installed (make test installs it)")
	}
	dir := t.TempDir()
	n := &proxyNode{bin: filepath.Join(dir, "proxy"), world: filepath.Join(dir, "world")}
	if out, err := exec.Command("go", "build", "-o", n.bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building proxy: %v\n%s", err, out)
	}
	if err := os.MkdirAll(n.world, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.world, "web.yaml"), []byte(kubeadmWorld), 0o644); err != nil {
		t.Fatal(err)
	}
	n.name = fmt.Sprintf("np-main-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", n.name).Run() })
	_ = exec.Command("ip", "netns", "exec", n.name, "ip", "link", "set", "lo", "up").Run()
	ns, err := netns.GetFromName(n.name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	n.ns = ns
	return n
}

// start runs the proxy in the namespace with args; stop ends it and waits.
func (n *proxyNode) start(t *testing.T, args ...string) (logs *bytes.Buffer, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs = &bytes.Buffer{}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, n.bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop = func() { cancel(); _ = cmd.Wait() }
	t.Cleanup(stop)
	return logs, stop
}

// output runs a command in the namespace, retrying for up to ~10 s until ok accepts its output.
func (n *proxyNode) output(ok func(string) bool, command ...string) string {
	var out string
	for range 50 {
		b, _ := exec.Command("ip", append([]string{"netns", "exec", n.name}, command...)...).CombinedOutput()
		if out = string(b); ok(out) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return out
}

// TestKubeadmConfigStarts runs the real binary with the kubeadm-written configuration (mode
// iptables) inside a throwaway network namespace, fed by the file source, and checks that it
// serves /healthz and /metrics there and programs the Service into KUBE-SERVICES.
func TestKubeadmConfigStarts(t *testing.T) {
	n := newProxyNode(t)
	logs, _ := n.start(t, "--config="+filepath.Join("app", "testdata", "kubeadm-kube-proxy.yaml"),
		"--source=file:"+n.world, "--hostname-override=node-a")
	if code, body := getInNetns(t, n.ns, "127.0.0.1:10256", "/healthz"); code != 200 || !strings.Contains(body, `"healthy":true`) {
		t.Fatalf("/healthz = %d %q, want 200 healthy; proxy log:\n%s", code, body, logs.String())
	}
	if code, body := getInNetns(t, n.ns, "127.0.0.1:10249", "/metrics"); code != 200 || !strings.Contains(body, "kubeproxy_sync_proxy_rules_endpoint_changes_total") {
		t.Fatalf("/metrics = %d, want 200 with kube-proxy metrics; proxy log:\n%s", code, logs.String())
	}
	save := n.output(func(s string) bool { return strings.Contains(s, "10.96.0.10/32") }, "iptables-save", "-t", "nat")
	if !strings.Contains(save, "-A KUBE-SERVICES") || !strings.Contains(save, "10.96.0.10/32") || !strings.Contains(save, "10.244.1.2:8080") {
		t.Fatalf("the Service is not programmed; iptables-save -t nat:\n%s\nproxy log:\n%s", save, logs.String())
	}
}

// TestNFTablesModeTakesOverAnIPTablesNode: a proxy in nftables mode started where one in
// iptables mode ran removes the KUBE-* chains the other left and programs its table.
func TestNFTablesModeTakesOverAnIPTablesNode(t *testing.T) {
	n := newProxyNode(t)
	logs, stop := n.start(t, "--proxy-mode=iptables", "--source=file:"+n.world, "--hostname-override=node-a",
		"--healthz-bind-address=127.0.0.1:10256", "--metrics-bind-address=127.0.0.1:10249")
	hasKube := func(s string) bool { return strings.Contains(s, "KUBE-SERVICES") }
	if save := n.output(hasKube, "iptables-save", "-t", "nat"); !hasKube(save) {
		t.Fatalf("iptables mode did not program KUBE-SERVICES:\n%s\nproxy log:\n%s", save, logs.String())
	}
	stop()
	logs, _ = n.start(t, "--proxy-mode=nftables", "--source=file:"+n.world, "--hostname-override=node-a",
		"--healthz-bind-address=127.0.0.1:10256", "--metrics-bind-address=127.0.0.1:10249")
	if code, body := getInNetns(t, n.ns, "127.0.0.1:10256", "/healthz"); code != 200 || !strings.Contains(body, `"healthy":true`) {
		t.Fatalf("/healthz = %d %q, want 200 healthy; proxy log:\n%s", code, body, logs.String())
	}
	if save := n.output(func(s string) bool { return !hasKube(s) }, "iptables-save"); hasKube(save) {
		t.Fatalf("the iptables-mode chains are still there after nftables mode synced:\n%s\nproxy log:\n%s", save, logs.String())
	}
	hasService := func(s string) bool { return strings.Contains(s, "10.96.0.10") }
	if out := n.output(hasService, "nft", "list", "table", "ip", "nodeproxy"); !hasService(out) {
		t.Fatalf("nft list table ip nodeproxy does not hold the Service:\n%s\nproxy log:\n%s", out, logs.String())
	}
}
