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

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Result is the outcome of a probe attempt or the reported state of a probe.
type Result int

const (
	// Unknown means no result yet (a startup probe before its first verdict).
	Unknown Result = iota
	// Success means the probe passed.
	Success
	// Failure means the probe failed.
	Failure
)

// String returns the result's name.
func (r Result) String() string {
	return [...]string{"Unknown", "Success", "Failure"}[r]
}

// ExecFunc runs argv inside the pod's network namespace and returns its exit code and
// combined output; it must stop the command when ctx ends.
type ExecFunc func(ctx context.Context, argv []string) (exitCode int, output string, err error)

// Runner performs one probe attempt; ctx carries the probe's timeout.
type Runner interface {
	Probe(ctx context.Context) (Result, string)
}

// userAgent is what kubelet sends in HTTP probes.
const userAgent = "kube-probe/1.37"

// NewRunner checks probe p of container c and returns its attempt runner: HTTP and TCP
// probes go to podIP (unless httpGet.host is set), exec probes through execFn. An
// unsupported handler, a port out of range or an unknown named port is an error.
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
		return &tcpRunner{addr: net.JoinHostPort(cmp.Or(h.TCPSocket.Host, podIP), strconv.Itoa(port))}, nil
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
	url     string
	headers http.Header
	client  *http.Client
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
	r := &httpRunner{url: scheme + "://" + host + "/" + strings.TrimPrefix(g.Path, "/"), headers: http.Header{}}
	r.headers.Set("User-Agent", userAgent)
	r.headers.Set("Accept", "*/*")
	for _, h := range g.HTTPHeaders {
		r.headers.Add(h.Name, h.Value)
	}
	r.client = &http.Client{
		Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // kubelet does not verify probe certificates either
		},
		// Like kubelet, a redirect answer counts by its own status code.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return r, nil
}

func (r *httpRunner) Probe(ctx context.Context) (Result, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return Failure, fmt.Sprintf("building request for %s: %v", r.url, err)
	}
	req.Header = r.headers.Clone()
	req.Host = cmp.Or(req.Header.Get("Host"), req.Host) // a Host header sets the request's host
	resp, err := r.client.Do(req)
	if err != nil {
		return Failure, fmt.Sprintf("Get %q: %v", r.url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 10<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 400 {
		return Success, ""
	}
	return Failure, fmt.Sprintf("HTTP probe failed with statuscode: %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
}

type tcpRunner struct{ addr string }

func (r *tcpRunner) Probe(ctx context.Context) (Result, string) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", r.addr)
	if err != nil {
		return Failure, fmt.Sprintf("dial tcp %s: %v", r.addr, err)
	}
	_ = conn.Close()
	return Success, ""
}
