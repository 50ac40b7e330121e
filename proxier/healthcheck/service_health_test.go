package healthcheck

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

var (
	loopback = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	svcA     = types.NamespacedName{Namespace: "ns", Name: "svc-a"}
	svcB     = types.NamespacedName{Namespace: "ns", Name: "svc-b"}
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

type recorded struct {
	mu    sync.Mutex
	names []types.NamespacedName
}

func (r *recorded) record(svc types.NamespacedName, _ error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.names = append(r.names, svc)
}

func newTestServer(t *testing.T, healthy *atomic.Bool, rec *recorded) *ServiceHealthServer {
	t.Helper()
	s := NewServiceHealthServer(loopback, healthy.Load, rec.record)
	t.Cleanup(s.Close)
	return s
}

type hcResponse struct {
	code   int
	weight string
	body   string
}

func probe(t *testing.T, port uint16, path string) (hcResponse, error) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return hcResponse{}, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return hcResponse{}, fmt.Errorf("reading body: %w", err)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	return hcResponse{code: res.StatusCode, weight: res.Header.Get("X-Load-Balancing-Endpoint-Weight"), body: string(body)}, nil
}

func mustProbe(t *testing.T, port uint16) hcResponse {
	t.Helper()
	r, err := probe(t, port, "/")
	if err != nil {
		t.Fatalf("probing port %d: %v", port, err)
	}
	return r
}

func expectRefused(t *testing.T, port uint16) {
	t.Helper()
	conn, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), 2*time.Second)
	if err == nil {
		conn.Close()
		t.Errorf("port %d still accepts connections", port)
	}
}

func upstreamBody(name types.NamespacedName, endpoints int, healthy bool) string {
	return fmt.Sprintf("{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n"+
		"\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %t\n}", name.Namespace, name.Name, endpoints, healthy)
}

func TestServiceHealthEndpointsAndProxyHealth(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s := newTestServer(t, &healthy, &recorded{})
	port := freePort(t)
	if err := s.SyncServices(map[types.NamespacedName]uint16{svcA: port}); err != nil {
		t.Fatalf("SyncServices: %v", err)
	}

	if r := mustProbe(t, port); r.code != http.StatusServiceUnavailable || r.weight != "0" || r.body != upstreamBody(svcA, 0, true) {
		t.Errorf("0 endpoints: got %d weight %q body\n%s", r.code, r.weight, r.body)
	}

	s.SyncEndpoints(map[types.NamespacedName]int{svcA: 2})
	r, err := probe(t, port, "/any/path?x=1")
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	if r.code != http.StatusOK || r.weight != "2" || r.body != upstreamBody(svcA, 2, true) {
		t.Errorf("2 endpoints: got %d weight %q body\n%s", r.code, r.weight, r.body)
	}

	healthy.Store(false)
	if r := mustProbe(t, port); r.code != http.StatusServiceUnavailable || r.weight != "2" || r.body != upstreamBody(svcA, 2, false) {
		t.Errorf("proxy unhealthy: got %d weight %q body\n%s", r.code, r.weight, r.body)
	}

	healthy.Store(true)
	s.SyncEndpoints(map[types.NamespacedName]int{})
	if r := mustProbe(t, port); r.code != http.StatusServiceUnavailable || r.weight != "0" {
		t.Errorf("service left out of SyncEndpoints: got %d weight %q, want 503 weight 0", r.code, r.weight)
	}
}

func TestServiceHealthPortChangeAndRemoval(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s := newTestServer(t, &healthy, &recorded{})
	oldPort, bPort := freePort(t), freePort(t)
	if err := s.SyncServices(map[types.NamespacedName]uint16{svcA: oldPort, svcB: bPort}); err != nil {
		t.Fatalf("SyncServices: %v", err)
	}
	s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1, svcB: 3})
	mustProbe(t, oldPort)

	newPort := freePort(t)
	if err := s.SyncServices(map[types.NamespacedName]uint16{svcA: newPort, svcB: bPort}); err != nil {
		t.Fatalf("SyncServices with a new port: %v", err)
	}
	expectRefused(t, oldPort)
	if r := mustProbe(t, newPort); r.code != http.StatusOK || r.weight != "1" {
		t.Errorf("new port: got %d weight %q, want 200 weight 1", r.code, r.weight)
	}
	if r := mustProbe(t, bPort); r.code != http.StatusOK || r.weight != "3" {
		t.Errorf("unchanged service: got %d weight %q, want 200 weight 3", r.code, r.weight)
	}

	if err := s.SyncServices(map[types.NamespacedName]uint16{svcB: bPort}); err != nil {
		t.Fatalf("SyncServices removing svc-a: %v", err)
	}
	expectRefused(t, newPort)
	mustProbe(t, bPort)

	s.Close()
	expectRefused(t, bPort)
}

func TestServiceHealthListenFailureDoesNotAbortOthers(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	rec := &recorded{}
	s := newTestServer(t, &healthy, rec)

	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("occupying a port: %v", err)
	}
	defer busy.Close()
	busyPort := uint16(busy.Addr().(*net.TCPAddr).Port)
	goodPort := freePort(t)

	err = s.SyncServices(map[types.NamespacedName]uint16{svcA: busyPort, svcB: goodPort})
	if err == nil {
		t.Fatal("SyncServices with a port in use returned no error")
	}
	rec.mu.Lock()
	if len(rec.names) != 1 || rec.names[0] != svcA {
		t.Errorf("recorder got %v, want [%v]", rec.names, svcA)
	}
	rec.mu.Unlock()
	mustProbe(t, goodPort)

	busy.Close()
	if err := s.SyncServices(map[types.NamespacedName]uint16{svcA: busyPort, svcB: goodPort}); err != nil {
		t.Fatalf("retry after the port was freed: %v", err)
	}
	mustProbe(t, busyPort)
}

func TestServiceHealthListenAddrs(t *testing.T) {
	s := NewServiceHealthServer([]netip.Addr{
		netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("::"), netip.MustParseAddr("::ffff:10.0.0.1"),
	}, nil, nil)
	networks, addrs := s.listenAddrs(30000)
	wantNets := []string{"tcp4", "tcp6", "tcp4"}
	wantAddrs := []string{"0.0.0.0:30000", "[::]:30000", "10.0.0.1:30000"}
	for i := range wantNets {
		if networks[i] != wantNets[i] || addrs[i] != wantAddrs[i] {
			t.Errorf("listen %d = %s %s, want %s %s", i, networks[i], addrs[i], wantNets[i], wantAddrs[i])
		}
	}
	networks, addrs = NewServiceHealthServer(nil, nil, nil).listenAddrs(30000)
	if len(networks) != 1 || networks[0] != "tcp" || addrs[0] != ":30000" {
		t.Errorf("no listen IPs: got %v %v, want tcp :30000", networks, addrs)
	}
}
