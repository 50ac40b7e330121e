// Package healthcheck implements kube-proxy's health reporting: ProxyHealth backs the
// /healthz and /livez endpoints on healthzBindAddress, and ServiceHealthServer serves the
// per-Service health-check node ports of LoadBalancer Services with
// externalTrafficPolicy=Local. Response bodies, headers and status codes follow upstream
// kube-proxy (pkg/proxy/healthcheck) so load balancers and probes see the same answers.
package healthcheck

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// ToBeDeletedTaint is the taint the Cluster Autoscaler puts on a node before deleting it; a
// node carrying it is not eligible for /healthz.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// familyHealth is the per-IP-family part of the /healthz and /livez body.
type familyHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// healthBody is the /healthz and /livez JSON body, field for field as upstream's ProxyHealth.
type healthBody struct {
	LastUpdated  time.Time                    `json:"lastUpdated"`
	CurrentTime  time.Time                    `json:"currentTime"`
	NodeEligible *bool                        `json:"nodeEligible,omitempty"`
	Healthy      bool                         `json:"healthy"`
	Status       map[v1.IPFamily]familyHealth `json:"status,omitempty"`
}

// ProxyHealth tracks whether the proxy keeps its rules up to date, per IP family, and whether
// its node is eligible for traffic. It is safe for concurrent use.
//
// A family is unhealthy iff an update has been queued (QueuedUpdate) and not applied
// (Updated) for healthTimeout or longer. As upstream, a family only counts once it has been
// Updated at least once (the sync loop does so when it starts), so a proxy that is still
// starting up is healthy.
type ProxyHealth struct {
	clock         clock.PassiveClock
	healthTimeout time.Duration
	families      []v1.IPFamily
	metrics       *metrics.Metrics

	mu            sync.RWMutex
	lastUpdated   map[v1.IPFamily]time.Time
	oldestPending map[v1.IPFamily]time.Time
	nodeEligible  bool
}

// NewProxyHealth returns a ProxyHealth. healthTimeout is upstream's 2×syncPeriod. families
// lists the IP families the proxy runs; updates reported for other families are ignored with
// a log line (empty: accept every family). m counts /healthz and /livez responses; nil
// disables counting. Until SyncNode is called with a node, the node is not eligible, like
// upstream before its NodeManager has seen the Node.
func NewProxyHealth(clk clock.PassiveClock, healthTimeout time.Duration, families []v1.IPFamily, m *metrics.Metrics) *ProxyHealth {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &ProxyHealth{
		clock:         clk,
		healthTimeout: healthTimeout,
		families:      slices.Clone(families),
		metrics:       m,
		lastUpdated:   map[v1.IPFamily]time.Time{},
		oldestPending: map[v1.IPFamily]time.Time{},
	}
}

// known reports whether family is one this ProxyHealth tracks, logging when it is not.
func (h *ProxyHealth) known(family v1.IPFamily, what string) bool {
	if len(h.families) == 0 || slices.Contains(h.families, family) {
		return true
	}
	klog.InfoS("Ignoring health update for an IP family the proxy does not run",
		"update", what, "ipFamily", family, "families", h.families)
	return false
}

// QueuedUpdate records that the proxier for family has changes it has not yet applied. Only
// the oldest pending time is kept, so repeated events do not postpone unhealthiness.
func (h *ProxyHealth) QueuedUpdate(family v1.IPFamily) {
	if !h.known(family, "queued") {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, pending := h.oldestPending[family]; !pending {
		h.oldestPending[family] = h.clock.Now()
	}
}

// Updated records that the proxier for family has applied all changes: it clears the pending
// update and sets the family's last update time to now.
func (h *ProxyHealth) Updated(family v1.IPFamily) {
	if !h.known(family, "updated") {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.oldestPending, family)
	h.lastUpdated[family] = h.clock.Now()
}

// SyncNode records the proxy's Node. The node is eligible unless node is nil (missing or
// deleted), has a deletionTimestamp, or carries the ToBeDeletedTaint.
func (h *ProxyHealth) SyncNode(node *v1.Node) {
	eligible := nodeEligible(node)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nodeEligible = eligible
}

func nodeEligible(node *v1.Node) bool {
	if node == nil || !node.DeletionTimestamp.IsZero() {
		return false
	}
	for _, taint := range node.Spec.Taints {
		if taint.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

// NodeEligible reports the node eligibility recorded by the last SyncNode.
func (h *ProxyHealth) NodeEligible() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.nodeEligible
}

// Health reports whether every family is healthy and the most recent time any family was
// Updated (zero if none was). Node eligibility is not part of it (see NodeEligible).
func (h *ProxyHealth) Health() (healthy bool, lastUpdated time.Time) {
	body := h.snapshot()
	return body.Healthy, body.LastUpdated
}

// Healthy reports whether every family is healthy; it is what the per-Service health-check
// servers use (NewServiceHealthServer's healthy function).
func (h *ProxyHealth) Healthy() bool {
	healthy, _ := h.Health()
	return healthy
}

// snapshot computes the health body (without node eligibility) at the current time.
func (h *ProxyHealth) snapshot() healthBody {
	h.mu.RLock()
	defer h.mu.RUnlock()
	now := h.clock.Now()
	body := healthBody{CurrentTime: now, Healthy: true, Status: map[v1.IPFamily]familyHealth{}}
	for family, updated := range h.lastUpdated {
		if updated.After(body.LastUpdated) {
			body.LastUpdated = updated
		}
		familyHealthy := true
		if queued, pending := h.oldestPending[family]; pending && now.Sub(queued) >= h.healthTimeout {
			familyHealthy = false
			body.Healthy = false
		}
		body.Status[family] = familyHealth{LastUpdated: updated, Healthy: familyHealthy}
	}
	return body
}

// Handler serves /healthz and /livez; every other path gets a 404. Both answer JSON with 200
// when healthy and 503 otherwise; /healthz additionally requires the node to be eligible and
// reports nodeEligible in the body.
func (h *ProxyHealth) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { h.serve(w, true) })
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { h.serve(w, false) })
	return mux
}

// serve writes the /healthz (withNode) or /livez answer and counts it.
func (h *ProxyHealth) serve(w http.ResponseWriter, withNode bool) {
	body := h.snapshot()
	healthy := body.Healthy
	if withNode {
		eligible := h.NodeEligible()
		body.NodeEligible = &eligible
		healthy = healthy && eligible
	}
	code := http.StatusServiceUnavailable
	if healthy {
		code = http.StatusOK
		// Upstream compatibility: a healthy answer reports "now" as lastUpdated, as older
		// releases did when lastUpdated was the last run of the sync loop.
		body.LastUpdated = h.clock.Now()
	}
	h.count(withNode, code)

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	out, err := json.Marshal(body)
	if err != nil {
		klog.ErrorS(err, "Encoding proxy health response")
		return
	}
	_, _ = w.Write(out)
}

func (h *ProxyHealth) count(healthz bool, code int) {
	if h.metrics == nil {
		return
	}
	counter := h.metrics.ProxyLivezTotal
	if healthz {
		counter = h.metrics.ProxyHealthzTotal
	}
	counter.WithLabelValues(fmt.Sprint(code)).Inc()
}
