// Package probe runs Kubernetes container probes (exec, httpGet, tcpSocket) with the
// timing and threshold semantics of the Kubernetes API.
package probe

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/clock"
)

// Result is the outcome of a probe attempt or the reported state of a probe.
type Result int

// The results: Unknown is a startup probe's before its first verdict.
const (
	Unknown Result = iota
	Success
	Failure
)

// String returns the result's name.
func (r Result) String() string {
	return [...]string{"Unknown", "Success", "Failure"}[r]
}

// ExecFunc runs argv in the pod until it exits or ctx ends, and returns its exit code and output.
type ExecFunc func(ctx context.Context, argv []string) (exitCode int, output string, err error)

// Runner performs one probe attempt; ctx carries the probe's timeout.
type Runner interface {
	Probe(ctx context.Context) (Result, string)
}

// NewRunner checks probe p of container c and returns its runner: HTTP and TCP probes go
// to podIP unless a host is set, exec probes through execFn.
func NewRunner(p *v1.Probe, c *v1.Container, podIP string, execFn ExecFunc) (Runner, error) {
	h := p.ProbeHandler
	switch {
	case h.Exec != nil:
		if len(h.Exec.Command) == 0 {
			return nil, errors.New("exec probe has no command")
		}
		return &execRunner{argv: h.Exec.Command, exec: execFn}, nil
	case h.HTTPGet != nil:
		return newHTTPRunner(h.HTTPGet, c, podIP)
	case h.TCPSocket != nil:
		port, err := resolvePort(h.TCPSocket.Port, c)
		if err != nil {
			return nil, fmt.Errorf("tcpSocket probe: %w", err)
		}
		return tcpRunner(net.JoinHostPort(cmp.Or(h.TCPSocket.Host, podIP), strconv.Itoa(port))), nil
	case h.GRPC != nil:
		return nil, errors.New("grpc probes are not supported")
	}
	return nil, errors.New("probe has no handler (exec, httpGet or tcpSocket)")
}

// resolvePort turns a probe port (number or container port name) into a number.
func resolvePort(port intstr.IntOrString, c *v1.Container) (int, error) {
	if port.Type == intstr.String {
		for _, cp := range c.Ports {
			if cp.Name == port.StrVal {
				return resolvePort(intstr.FromInt32(cp.ContainerPort), c)
			}
		}
		if n, err := strconv.Atoi(port.StrVal); err == nil {
			return resolvePort(intstr.FromInt(n), c)
		}
		return 0, fmt.Errorf("unknown named port %q", port.StrVal)
	}
	if port.IntVal < 1 || port.IntVal > 65535 {
		return 0, fmt.Errorf("port %d out of range 1-65535", port.IntVal)
	}
	return int(port.IntVal), nil
}

type execRunner struct {
	argv []string
	exec ExecFunc
}

func (r *execRunner) Probe(ctx context.Context) (Result, string) {
	code, out, err := r.exec(ctx, r.argv)
	switch {
	case ctx.Err() != nil:
		return Failure, fmt.Sprintf("command %q timed out", r.argv)
	case err != nil:
		return Failure, fmt.Sprintf("command %q: %v", r.argv, err)
	case code != 0:
		return Failure, fmt.Sprintf("command %q exited with %d: %s", r.argv, code, strings.TrimSpace(out))
	}
	return Success, ""
}

type httpRunner struct {
	req    *http.Request
	client *http.Client
}

func newHTTPRunner(g *v1.HTTPGetAction, c *v1.Container, podIP string) (*httpRunner, error) {
	port, err := resolvePort(g.Port, c)
	if err != nil {
		return nil, fmt.Errorf("httpGet probe: %w", err)
	}
	scheme := strings.ToLower(string(cmp.Or(g.Scheme, v1.URISchemeHTTP)))
	if scheme != "http" && scheme != "https" {
		return nil, fmt.Errorf("httpGet probe: unknown scheme %q", g.Scheme)
	}
	host := net.JoinHostPort(cmp.Or(g.Host, podIP), strconv.Itoa(port))
	req, err := http.NewRequest(http.MethodGet, scheme+"://"+host+"/"+strings.TrimPrefix(g.Path, "/"), nil)
	if err != nil {
		return nil, fmt.Errorf("httpGet probe: %w", err)
	}
	req.Header = http.Header{"User-Agent": {"kube-probe/1.37"}, "Accept": {"*/*"}} // as kubelet sends
	for _, h := range g.HTTPHeaders {
		req.Header.Add(h.Name, h.Value)
	}
	req.Host = cmp.Or(req.Header.Get("Host"), req.Host) // a Host header sets the request's host
	return &httpRunner{req: req, client: &http.Client{
		Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // kubelet does not verify probe certificates either
		},
		// Like kubelet, a redirect answer counts by its own status code.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

func (r *httpRunner) Probe(ctx context.Context) (Result, string) {
	resp, err := r.client.Do(r.req.Clone(ctx))
	if err != nil {
		return Failure, fmt.Sprintf("Get %q: %v", r.req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 10<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 400 {
		return Success, ""
	}
	return Failure, fmt.Sprintf("HTTP probe failed with statuscode: %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
}

// tcpRunner is the address a TCP probe connects to.
type tcpRunner string

func (addr tcpRunner) Probe(ctx context.Context) (Result, string) {
	conn, err := new(net.Dialer).DialContext(ctx, "tcp", string(addr))
	if err != nil {
		return Failure, fmt.Sprintf("dial tcp %s: %v", addr, err)
	}
	_ = conn.Close()
	return Success, ""
}

// Kind is which of a container's probes a worker runs.
type Kind string

// The three probe kinds.
const (
	Startup   Kind = "Startup"
	Readiness Kind = "Readiness"
	Liveness  Kind = "Liveness"
)

// Timing is a probe's schedule and thresholds with the API defaults applied.
type Timing struct {
	InitialDelay, Period, Timeout      time.Duration
	SuccessThreshold, FailureThreshold int
}

// TimingOf reads p's timing, with the API defaults for unset fields.
func TimingOf(p *v1.Probe) Timing {
	return Timing{
		InitialDelay:     time.Duration(max(p.InitialDelaySeconds, 0)) * time.Second,
		Period:           time.Duration(cmp.Or(max(p.PeriodSeconds, 0), 10)) * time.Second,
		Timeout:          time.Duration(cmp.Or(max(p.TimeoutSeconds, 0), 1)) * time.Second,
		SuccessThreshold: int(cmp.Or(max(p.SuccessThreshold, 0), 1)),
		FailureThreshold: int(cmp.Or(max(p.FailureThreshold, 0), 3)),
	}
}

// Tracker reports a result once it came that probe's threshold times in a row.
type Tracker struct {
	Current Result // the reported result
	timing  Timing
	last    Result
	run     int
}

// NewTracker returns a tracker reporting kind's initial result: not ready, alive, and
// not known to have started.
func NewTracker(kind Kind, timing Timing) *Tracker {
	return &Tracker{Current: map[Kind]Result{Readiness: Failure, Liveness: Success}[kind], timing: timing}
}

// Observe records a result and reports whether it reached its threshold (and is now Current).
func (t *Tracker) Observe(r Result) bool {
	if r == t.last {
		t.run++
	} else {
		t.last, t.run = r, 1
	}
	if (r == Failure && t.run < t.timing.FailureThreshold) || (r == Success && t.run < t.timing.SuccessThreshold) {
		return false
	}
	t.Current = r
	return true
}

// Worker probes one container instance on its probe's schedule.
type Worker struct {
	Kind   Kind
	Timing Timing
	Runner Runner
	Clock  clock.WithTicker
	// OnChange is called when the reported result changes, with the last attempt's message.
	OnChange func(r Result, message string)
}

// Run probes from startedAt+InitialDelay every Period until ctx ends, a startup probe
// reaches a verdict or a liveness probe fails.
func (w *Worker) Run(ctx context.Context, startedAt time.Time) {
	if delay := startedAt.Add(w.Timing.InitialDelay).Sub(w.Clock.Now()); delay > 0 {
		select {
		case <-ctx.Done():
			return
		case <-w.Clock.After(delay):
		}
	}
	ticker := w.Clock.NewTicker(w.Timing.Period)
	defer ticker.Stop()
	tracker := NewTracker(w.Kind, w.Timing)
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, w.Timing.Timeout)
		result, msg := w.Runner.Probe(attemptCtx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		before := tracker.Current
		if tracker.Observe(result) {
			if tracker.Current != before {
				w.OnChange(result, msg)
			}
			if w.Kind == Startup || (w.Kind == Liveness && result == Failure) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
	}
}
