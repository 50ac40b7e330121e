package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// recordingBackend counts the service ports it has been asked to program.
type recordingBackend struct {
	mu    sync.Mutex
	syncs int
	ports int
}

func (b *recordingBackend) Sync(_ context.Context, req *proxier.SyncRequest) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.syncs++
	b.ports = req.Trackers[0].ServicePortCount()
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

const testWorld = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  externalTrafficPolicy: Local
  healthCheckNodePort: %d
  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.2]
  nodeName: node-a
  conditions: {ready: true}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
`

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	var lastErr error
	for range 100 { // bounded: ~5 s
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(body)
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("GET %s: %v", url, lastErr)
	return 0, ""
}

func TestRunServesHealthMetricsAndHealthCheckNodePort(t *testing.T) {
	backend := &recordingBackend{}
	// Stand in for the userspace mode's backend: this test is about the server around it, and
	// must not touch the host's rules.
	savedCleanup := cleanupOtherModes
	cleanupOtherModes = func(v1alpha1.ProxyMode) {}
	defer func() { cleanupOtherModes = savedCleanup }()
	saved, had := modes[ModeUserspace]
	modes[ModeUserspace] = func(context.Context, *modeEnv) (proxier.Backend, func(), error) { return backend, func() {}, nil }
	defer func() {
		delete(modes, ModeUserspace)
		if had {
			modes[ModeUserspace] = saved
		}
	}()

	dir := t.TempDir()
	hcPort := freePort(t)
	if err := os.WriteFile(filepath.Join(dir, "world.yaml"), []byte(fmt.Sprintf(testWorld, hcPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	healthz := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := &Config{Mode: ModeUserspace, NodeName: "node-a", SourceDir: dir, BindAddress: "127.0.0.1",
		HealthzBindAddress: healthz, MetricsBindAddress: metricsAddr, SyncPeriod: 30 * time.Second,
		ConfigSyncPeriod: time.Minute, NodePortAddresses: []string{"127.0.0.1/32"}, OOMScoreAdj: -999}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after cancel", err)
		}
	}()

	code, body := httpGet(t, "http://"+healthz+"/healthz")
	var hz map[string]any
	if err := json.Unmarshal([]byte(body), &hz); err != nil || code != 200 {
		t.Fatalf("/healthz = %d %q, want 200 with JSON", code, body)
	}
	for _, k := range []string{"lastUpdated", "currentTime", "nodeEligible", "healthy"} {
		if _, ok := hz[k]; !ok {
			t.Errorf("/healthz body lacks %q: %s", k, body)
		}
	}
	if code, _ := httpGet(t, "http://"+healthz+"/livez"); code != 200 {
		t.Errorf("/livez = %d, want 200", code)
	}
	if _, mode := httpGet(t, "http://"+metricsAddr+"/proxyMode"); mode != "userspace" {
		t.Errorf("/proxyMode = %q, want userspace", mode)
	}
	// The health-check node port answers once the first sync has applied the Service.
	var hcBody string
	for range 100 {
		code, hcBody = httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", hcPort))
		if code == 200 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code != 200 || !strings.Contains(hcBody, `"localEndpoints": 1`) {
		t.Errorf("health-check node port = %d %q, want 200 with one local endpoint", code, hcBody)
	}
	_, m := httpGet(t, "http://"+metricsAddr+"/metrics")
	for _, name := range []string{"kubeproxy_sync_proxy_rules_duration_seconds", "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "kubeproxy_proxy_healthz_total", "kubeproxy_sync_proxy_rules_service_changes_total"} {
		if !strings.Contains(m, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	backend.mu.Lock()
	defer backend.mu.Unlock()
	if backend.syncs == 0 || backend.ports != 1 {
		t.Errorf("backend saw %d syncs with %d ports, want >0 syncs with 1 port", backend.syncs, backend.ports)
	}
}

func TestTheFirstSyncWaitsForTheOtherModesCleanup(t *testing.T) {
	release := make(chan struct{})
	started := make(chan v1alpha1.ProxyMode, 1)
	savedCleanup := cleanupOtherModes
	cleanupOtherModes = func(mode v1alpha1.ProxyMode) { started <- mode; <-release }
	defer func() { cleanupOtherModes = savedCleanup }()

	backend := &recordingBackend{}
	req := &proxier.SyncRequest{Trackers: []*proxier.Tracker{proxier.NewTracker("IPv4", "node-a")}}
	gated := afterCleanup(backend, ModeNFTables)
	if mode := <-started; mode != ModeNFTables {
		t.Errorf("cleanup told mode %q, want nftables", mode)
	}
	synced := make(chan error, 1)
	go func() { synced <- gated.Sync(context.Background(), req) }()
	select {
	case err := <-synced:
		t.Fatalf("Sync returned (%v) while the cleanup was still running", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-synced; err != nil || backend.syncs != 1 {
		t.Fatalf("after the cleanup: Sync = %v with %d backend syncs, want nil and 1", err, backend.syncs)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	stuck := &cleanupGate{Backend: backend, cleaned: make(chan struct{})}
	if err := stuck.Sync(ctx, req); err == nil {
		t.Errorf("a cancelled Sync waiting for the cleanup returned nil")
	}
}
