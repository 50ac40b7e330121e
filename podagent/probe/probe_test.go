package probe

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// hostExec runs argv on the host, as the pod runtime does inside the pod namespace.
func hostExec(ctx context.Context, argv []string) (int, string, error) {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && ctx.Err() == nil {
		return exitErr.ExitCode(), string(out), nil
	}
	return 0, string(out), err
}

func runOnce(t *testing.T, p *v1.Probe, c *v1.Container, ip string, timeout time.Duration) (Result, string) {
	t.Helper()
	r, err := NewRunner(p, c, ip, hostExec)
	if err != nil {
		t.Fatalf("NewRunner: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return r.Probe(ctx)
}

func execProbe(argv ...string) *v1.Probe {
	return &v1.Probe{ProbeHandler: v1.ProbeHandler{Exec: &v1.ExecAction{Command: argv}}}
}

func TestExecProbe(t *testing.T) {
	cases := []struct {
		name    string
		argv    []string
		want    Result
		message string
	}{
		{"exit 0 succeeds", []string{"sh", "-c", "exit 0"}, Success, ""},
		{"exit 3 fails with output", []string{"sh", "-c", "echo broken; exit 3"}, Failure, "exited with 3: broken"},
		{"timeout fails", []string{"sleep", "30"}, Failure, "timed out"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, msg := runOnce(t, execProbe(tc.argv...), &v1.Container{}, "", 300*time.Millisecond)
			if got != tc.want || !strings.Contains(msg, tc.message) {
				t.Errorf("got %v %q, want %v containing %q", got, msg, tc.want, tc.message)
			}
		})
	}
}

func hostPort(t *testing.T, addr string) (string, int32) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return host, int32(n)
}

func TestHTTPGetProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/status":
			code, _ := strconv.Atoi(r.URL.Query().Get("code"))
			w.WriteHeader(code)
		case "/headers":
			if r.Header.Get("X-Probe") != "yes" || r.Host != "example.test" || !strings.HasPrefix(r.UserAgent(), "kube-probe/") {
				w.WriteHeader(http.StatusBadRequest)
			}
		case "/slow":
			<-r.Context().Done()
		}
	}))
	defer srv.Close()
	ip, port := hostPort(t, srv.Listener.Addr().String())
	named := &v1.Container{Ports: []v1.ContainerPort{{Name: "web", ContainerPort: port}}}
	get := func(path string, headers ...v1.HTTPHeader) *v1.Probe {
		return &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{
			Path: path, Port: intstr.FromString("web"), HTTPHeaders: headers,
		}}}
	}
	cases := []struct {
		name  string
		probe *v1.Probe
		want  Result
	}{
		{"200 succeeds", get("/status?code=200"), Success},
		{"302 succeeds", get("/status?code=302"), Success},
		{"399 succeeds", get("/status?code=399"), Success},
		{"400 fails", get("/status?code=400"), Failure},
		{"404 fails", get("/status?code=404"), Failure},
		{"500 fails", get("/status?code=500"), Failure},
		{"headers and Host are sent", get("/headers", v1.HTTPHeader{Name: "X-Probe", Value: "yes"}, v1.HTTPHeader{Name: "Host", Value: "example.test"}), Success},
		{"headers missing fails", get("/headers"), Failure},
		{"timeout fails", get("/slow"), Failure},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got, msg := runOnce(t, tc.probe, named, ip, 300*time.Millisecond); got != tc.want {
				t.Errorf("got %v (%s), want %v", got, msg, tc.want)
			}
		})
	}
	numeric := &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "status?code=204", Port: intstr.FromInt32(port)}}}
	if got, msg := runOnce(t, numeric, &v1.Container{}, ip, time.Second); got != Success {
		t.Errorf("numeric port, path without slash: got %v (%s), want Success", got, msg)
	}
}

func TestTCPSocketProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ip, open := hostPort(t, l.Addr().String())
	closedListener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closed := hostPort(t, closedListener.Addr().String())
	_ = closedListener.Close()
	defer l.Close()
	tcp := func(port int32) *v1.Probe {
		return &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(port)}}}
	}
	if got, msg := runOnce(t, tcp(open), &v1.Container{}, ip, time.Second); got != Success {
		t.Errorf("open port: got %v (%s), want Success", got, msg)
	}
	if got, _ := runOnce(t, tcp(closed), &v1.Container{}, ip, time.Second); got != Failure {
		t.Errorf("closed port: got %v, want Failure", got)
	}
}

func TestNewRunnerRejectsBadProbes(t *testing.T) {
	c := &v1.Container{Ports: []v1.ContainerPort{{Name: "web", ContainerPort: 8080}}}
	httpOn := func(port intstr.IntOrString) *v1.Probe {
		return &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Port: port}}}
	}
	cases := []struct {
		name  string
		probe *v1.Probe
		want  string
	}{
		{"no handler", &v1.Probe{}, "no handler"},
		{"grpc", &v1.Probe{ProbeHandler: v1.ProbeHandler{GRPC: &v1.GRPCAction{Port: 80}}}, "grpc"},
		{"exec without command", execProbe(), "no command"},
		{"port 0", httpOn(intstr.FromInt(0)), "out of range"},
		{"port 70000", httpOn(intstr.FromInt(70000)), "out of range"},
		{"unknown named port", httpOn(intstr.FromString("metrics")), `unknown named port "metrics"`},
		{"tcp unknown named port", &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromString("x")}}}, "unknown named port"},
		{"bad scheme", &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Port: intstr.FromInt(80), Scheme: "FTP"}}}, "scheme"},
	}
	for _, tc := range cases {
		if _, err := NewRunner(tc.probe, c, "10.0.0.1", hostExec); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := NewRunner(httpOn(intstr.FromString("web")), c, "10.0.0.1", nil); err != nil {
		t.Errorf("known named port: %v", err)
	}
}
