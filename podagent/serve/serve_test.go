package serve

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// freePort returns a port that was free on loopback a moment ago.
func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestHTTPEndpointsAndFailureSwitches(t *testing.T) {
	s := &Server{cfg: Config{Name: "pod-1"}, exit: make(chan int, 1)}
	srv := httptest.NewServer(s)
	defer srv.Close()
	expect := func(path string, code int, body string) {
		t.Helper()
		if gotCode, gotBody := get(t, srv.URL+path); gotCode != code || !strings.Contains(gotBody, body) {
			t.Errorf("%s: %d %q, want %d containing %q", path, gotCode, gotBody, code, body)
		}
	}
	expect("/hostname", 200, "pod-1")
	expect("/clientip", 200, "127.0.0.1:")
	expect("/", 200, "pod-1 127.0.0.1:")
	expect("/healthz", 200, "ok")
	expect("/readyz", 200, "ok")
	expect("/fail/readiness", 200, "ok")
	expect("/readyz", 500, "failing")
	expect("/healthz", 200, "ok")
	expect("/fail/liveness", 200, "ok")
	expect("/healthz", 500, "failing")
	expect("/recover", 200, "ok")
	expect("/readyz", 200, "ok")
	expect("/healthz", 200, "ok")
	expect("/fail", 200, "ok")
	expect("/healthz", 500, "failing")
	expect("/exit?code=3", 200, "exiting with 3")
	if code := <-s.exit; code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
}

func TestRunEchoesAndDrainsOnStop(t *testing.T) {
	tcpPort, udpPort, httpPort := freePort(t, "tcp"), freePort(t, "udp"), freePort(t, "tcp")
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := Run(ctx, Config{Name: "pod-1", TCPPorts: []int{tcpPort}, UDPPorts: []int{udpPort}, HTTPPort: httpPort, DrainDelay: 300 * time.Millisecond})
		done <- result{code, err}
	}()
	addr := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if conn, err = net.Dial("tcp", addr(tcpPort)); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("TCP echo never listened: %v", err)
	}
	r := bufio.NewReader(conn)
	line, _ := r.ReadString('\n')
	if want := "pod-1 " + conn.LocalAddr().String() + "\n"; line != want {
		t.Errorf("TCP greeting %q, want %q", line, want)
	}
	_, _ = conn.Write([]byte("ping\n"))
	if echoed, _ := r.ReadString('\n'); echoed != "ping\n" {
		t.Errorf("TCP echo %q, want ping", echoed)
	}
	_ = conn.Close()

	udp, err := net.Dial("udp", addr(udpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	_, _ = udp.Write([]byte("x"))
	_ = udp.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, err := udp.Read(buf)
	if want := "pod-1 " + udp.LocalAddr().String() + "\n"; err != nil || string(buf[:n]) != want {
		t.Errorf("UDP answer %q (%v), want %q", buf[:n], err, want)
	}

	cancel()
	// Run notices the cancellation asynchronously: poll /readyz within the first part of the
	// 300 ms drain (after it, the server is gone).
	code := 0
	for deadline := time.Now().Add(200 * time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if code, _ = get(t, "http://"+addr(httpPort)+"/readyz"); code == 500 {
			break
		}
	}
	if code != 500 {
		t.Errorf("/readyz while draining: %d, want 500", code)
	}
	if res := <-done; res.code != 0 || res.err != nil {
		t.Errorf("Run returned %d %v, want 0 nil", res.code, res.err)
	}
}
