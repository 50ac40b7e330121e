package healthcheck

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

var (
	t0          = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	dualStack   = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	healthyNode = &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
)

const timeout = 60 * time.Second

type fixture struct {
	clock   *clocktesting.FakeClock
	health  *ProxyHealth
	metrics *metrics.Metrics
	handler http.Handler
}

// newFixture returns a dual-stack ProxyHealth whose sync loops have started (Updated) and
// whose node is known and eligible.
func newFixture() *fixture {
	f := &fixture{clock: clocktesting.NewFakeClock(t0), metrics: metrics.New(metrics.ModeNFTables)}
	f.health = NewProxyHealth(f.clock, timeout, dualStack, f.metrics)
	f.health.SyncNode(healthyNode)
	for _, fam := range dualStack {
		f.health.Updated(fam)
	}
	f.handler = f.health.Handler()
	return f
}

type response struct {
	code   int
	header http.Header
	raw    string
	body   map[string]any
}

func (f *fixture) get(t *testing.T, path string) response {
	t.Helper()
	rec := httptest.NewRecorder()
	f.handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	res := rec.Result()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	r := response{code: res.StatusCode, header: res.Header, raw: string(raw)}
	if res.StatusCode != http.StatusNotFound {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Fatalf("%s body %q is not JSON: %v", path, raw, err)
		}
	}
	return r
}

func (f *fixture) expectCodes(t *testing.T, healthz, livez int) {
	t.Helper()
	if r := f.get(t, "/healthz"); r.code != healthz {
		t.Errorf("/healthz = %d, want %d (body %s)", r.code, healthz, r.raw)
	}
	if r := f.get(t, "/livez"); r.code != livez {
		t.Errorf("/livez = %d, want %d (body %s)", r.code, livez, r.raw)
	}
}

func TestHealthyAtStartAndStaleUpdate(t *testing.T) {
	f := newFixture()
	f.expectCodes(t, http.StatusOK, http.StatusOK)

	f.clock.Step(10 * time.Second)
	f.health.QueuedUpdate(v1.IPv6Protocol)
	f.clock.Step(timeout - time.Second)
	f.health.QueuedUpdate(v1.IPv6Protocol) // must not move the oldest pending time
	f.expectCodes(t, http.StatusOK, http.StatusOK)

	f.clock.Step(time.Second)
	f.expectCodes(t, http.StatusServiceUnavailable, http.StatusServiceUnavailable)
	if healthy, _ := f.health.Health(); healthy {
		t.Error("Health() healthy with an update pending for the whole timeout")
	}
	r := f.get(t, "/livez")
	status := r.body["status"].(map[string]any)
	if status["IPv4"].(map[string]any)["healthy"] != true || status["IPv6"].(map[string]any)["healthy"] != false {
		t.Errorf("per-family status = %v, want IPv4 healthy and IPv6 unhealthy", status)
	}
	if r.body["lastUpdated"] != "2024-01-02T03:04:05Z" {
		t.Errorf("unhealthy lastUpdated = %v, want the last Updated time", r.body["lastUpdated"])
	}

	f.health.Updated(v1.IPv6Protocol)
	f.expectCodes(t, http.StatusOK, http.StatusOK)
	healthy, last := f.health.Health()
	if !healthy || !last.Equal(t0.Add(timeout+10*time.Second)) {
		t.Errorf("Health() = %t, %v after Updated; want true, %v", healthy, last, t0.Add(timeout+10*time.Second))
	}
}

func TestNodeEligibilityOnlyAffectsHealthz(t *testing.T) {
	deleted := healthyNode.DeepCopy()
	deleted.DeletionTimestamp = &metav1.Time{Time: t0}
	tainted := healthyNode.DeepCopy()
	tainted.Spec.Taints = []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	otherTaint := healthyNode.DeepCopy()
	otherTaint.Spec.Taints = []v1.Taint{{Key: "example.com/other", Effect: v1.TaintEffectNoSchedule}}

	for _, tc := range []struct {
		name    string
		node    *v1.Node
		healthz int
	}{
		{"missing", nil, http.StatusServiceUnavailable},
		{"deleting", deleted, http.StatusServiceUnavailable},
		{"to be deleted by autoscaler", tainted, http.StatusServiceUnavailable},
		{"other taint", otherTaint, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			f.health.SyncNode(tc.node)
			f.expectCodes(t, tc.healthz, http.StatusOK)
			r := f.get(t, "/healthz")
			if want := tc.healthz == http.StatusOK; r.body["nodeEligible"] != want {
				t.Errorf("nodeEligible = %v, want %t", r.body["nodeEligible"], want)
			}
		})
	}
}

func TestNodeUnknownBeforeSyncNode(t *testing.T) {
	h := NewProxyHealth(clocktesting.NewFakeClock(t0), timeout, dualStack, nil)
	f := &fixture{health: h, handler: h.Handler()}
	f.expectCodes(t, http.StatusServiceUnavailable, http.StatusOK)
}

func TestHealthzBodyMatchesUpstream(t *testing.T) {
	f := newFixture()
	f.clock.Step(1500 * time.Millisecond)
	r := f.get(t, "/healthz")
	want := `{"lastUpdated":"2024-01-02T03:04:06.5Z","currentTime":"2024-01-02T03:04:06.5Z",` +
		`"nodeEligible":true,"healthy":true,"status":{` +
		`"IPv4":{"lastUpdated":"2024-01-02T03:04:05Z","healthy":true},` +
		`"IPv6":{"lastUpdated":"2024-01-02T03:04:05Z","healthy":true}}}`
	if r.raw != want {
		t.Errorf("/healthz body\n got %s\nwant %s", r.raw, want)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if v := r.header.Get("X-Content-Type-Options"); v != "nosniff" {
		t.Errorf("X-Content-Type-Options = %q, want nosniff", v)
	}
	if l := f.get(t, "/livez"); l.body["nodeEligible"] != nil {
		t.Errorf("/livez reports nodeEligible: %s", l.raw)
	}
}

func TestStatusOmittedBeforeFirstUpdate(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	h := NewProxyHealth(clk, timeout, dualStack, nil)
	f := &fixture{health: h, handler: h.Handler()}
	h.QueuedUpdate(v1.IPv4Protocol)
	clk.Step(2 * timeout)
	r := f.get(t, "/livez")
	want := `{"lastUpdated":"2024-01-02T03:06:05Z","currentTime":"2024-01-02T03:06:05Z","healthy":true}`
	if r.code != http.StatusOK || r.raw != want {
		t.Errorf("/livez before any Updated = %d %s, want 200 %s", r.code, r.raw, want)
	}
}

func TestUnknownFamilyIgnored(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	h := NewProxyHealth(clk, timeout, []v1.IPFamily{v1.IPv4Protocol}, nil)
	h.Updated(v1.IPv4Protocol)
	h.Updated(v1.IPv6Protocol)
	h.QueuedUpdate(v1.IPv6Protocol)
	clk.Step(2 * timeout)
	if !h.Healthy() {
		t.Error("an update queued for an IP family the proxy does not run made it unhealthy")
	}
}

func TestOtherPathsNotFound(t *testing.T) {
	f := newFixture()
	for _, path := range []string{"/", "/metrics", "/healthz/ping", "/livez/x", "/readyz"} {
		if r := f.get(t, path); r.code != http.StatusNotFound {
			t.Errorf("%s = %d, want 404", path, r.code)
		}
	}
}

func TestResponsesCounted(t *testing.T) {
	f := newFixture()
	f.get(t, "/healthz")
	f.get(t, "/healthz")
	f.get(t, "/livez")
	f.health.SyncNode(nil)
	f.get(t, "/healthz")
	f.get(t, "/livez")
	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"healthz 200", testutil.ToFloat64(f.metrics.ProxyHealthzTotal.WithLabelValues("200")), 2},
		{"healthz 503", testutil.ToFloat64(f.metrics.ProxyHealthzTotal.WithLabelValues("503")), 1},
		{"livez 200", testutil.ToFloat64(f.metrics.ProxyLivezTotal.WithLabelValues("200")), 2},
		{"livez 503", testutil.ToFloat64(f.metrics.ProxyLivezTotal.WithLabelValues("503")), 0},
	} {
		if tc.got != tc.want {
			t.Errorf("%s counter = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}
