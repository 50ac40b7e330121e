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

// TestKubeadmConfigStarts runs the real binary with the kubeadm-written configuration (mode
// iptables) inside a throwaway network namespace, fed by the file source, and checks that it
// serves /healthz and /metrics there and programs the Service into KUBE-SERVICES.
func TestKubeadmConfigStarts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the proxy in its own network namespace")
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("iptables-restore is not installed (make test installs it)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "proxy")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building proxy: %v\n%s", err, out)
	}
	world := filepath.Join(dir, "world")
	if err := os.MkdirAll(world, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(world, "web.yaml"), []byte(kubeadmWorld), 0o644); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("np-kubeadm-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", name).Run() })
	_ = exec.Command("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up").Run()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", name, bin,
		"--config="+filepath.Join("app", "testdata", "kubeadm-kube-proxy.yaml"),
		"--source=file:"+world, "--hostname-override=node-a")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })

	if code, body := getInNetns(t, ns, "127.0.0.1:10256", "/healthz"); code != 200 || !strings.Contains(body, `"healthy":true`) {
		t.Fatalf("/healthz = %d %q, want 200 healthy; proxy log:\n%s", code, body, logs.String())
	}
	if code, body := getInNetns(t, ns, "127.0.0.1:10249", "/metrics"); code != 200 || !strings.Contains(body, "kubeproxy_sync_proxy_rules_endpoint_changes_total") {
		t.Fatalf("/metrics = %d, want 200 with kube-proxy metrics; proxy log:\n%s", code, logs.String())
	}
	var save string
	for range 50 {
		out, _ := exec.Command("ip", "netns", "exec", name, "iptables-save", "-t", "nat").CombinedOutput()
		if save = string(out); strings.Contains(save, "10.96.0.10/32") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(save, "-A KUBE-SERVICES") || !strings.Contains(save, "10.96.0.10/32") || !strings.Contains(save, "10.244.1.2:8080") {
		t.Fatalf("the Service is not programmed; iptables-save -t nat:\n%s\nproxy log:\n%s", save, logs.String())
	}
}
