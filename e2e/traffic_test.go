package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// Bounds of one attempt and of the pause between attempts of a polling loop.
const (
	tcpAttemptTimeout = 2 * time.Second
	udpAttemptTimeout = time.Second
	attemptPause      = 20 * time.Millisecond
)

// reply is what a pod's echo server answers: its name and the client address it saw.
type reply struct {
	pod    string
	client netip.AddrPort
}

// request makes one attempt against a Service address and returns the reply.
type request func(ctx context.Context) (reply, error)

// tcpRequest connects from a namespace (a topology member or a pod sandbox) to addr and
// reads the echo server's greeting.
func tcpRequest(c *cluster.Cluster, from, addr string) request {
	return func(ctx context.Context) (reply, error) {
		conn, err := openEcho(ctx, c, from, addr)
		if err != nil {
			return reply{}, err
		}
		_ = conn.Close()
		return conn.greeting, nil
	}
}

// udpRequest sends one datagram from a new socket (so a new flow, and a new load-balancing
// choice) in a namespace to addr and reads the answer.
func udpRequest(c *cluster.Cluster, from, addr string) request {
	return func(ctx context.Context) (reply, error) {
		ctx, cancel := context.WithTimeout(ctx, udpAttemptTimeout)
		defer cancel()
		conn, err := dialFrom(ctx, c, from, "udp", addr)
		if err != nil {
			return reply{}, err
		}
		defer conn.Close()
		deadline, _ := ctx.Deadline()
		if err := conn.SetDeadline(deadline); err != nil {
			return reply{}, fmt.Errorf("setting a deadline on udp %s: %w", addr, err)
		}
		if _, err := conn.Write([]byte("hello\n")); err != nil {
			return reply{}, fmt.Errorf("sending to udp %s from %s: %w", addr, from, err)
		}
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			return reply{}, fmt.Errorf("reading the answer of udp %s from %s: %w", addr, from, err)
		}
		return parseReply(string(buf[:n]))
	}
}

// parseReply reads "<pod name> <client address>".
func parseReply(line string) (reply, error) {
	fields := strings.Fields(line)
	if len(fields) != 2 {
		return reply{}, fmt.Errorf("unexpected echo answer %q", line)
	}
	client, err := netip.ParseAddrPort(fields[1])
	if err != nil {
		return reply{}, fmt.Errorf("parsing the client address of echo answer %q: %w", line, err)
	}
	return reply{pod: fields[0], client: client}, nil
}

// echoConn is an open connection to a pod's TCP echo server.
type echoConn struct {
	net.Conn
	reader   *bufio.Reader
	greeting reply
}

// openEcho connects and reads the greeting line, all within tcpAttemptTimeout.
func openEcho(ctx context.Context, c *cluster.Cluster, from, addr string) (*echoConn, error) {
	ctx, cancel := context.WithTimeout(ctx, tcpAttemptTimeout)
	defer cancel()
	conn, err := dialFrom(ctx, c, from, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("setting a deadline on tcp %s: %w", addr, err)
	}
	ec := &echoConn{Conn: conn, reader: bufio.NewReader(conn)}
	line, err := ec.reader.ReadString('\n')
	if err == nil {
		ec.greeting, err = parseReply(line)
	} else {
		err = fmt.Errorf("reading the greeting of tcp %s from %s: %w", addr, from, err)
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return ec, nil
}

// roundTrip sends msg and wants it echoed back within tcpAttemptTimeout.
func (ec *echoConn) roundTrip(msg string) error {
	if err := ec.SetDeadline(time.Now().Add(tcpAttemptTimeout)); err != nil {
		return fmt.Errorf("setting a deadline: %w", err)
	}
	if _, err := io.WriteString(ec, msg+"\n"); err != nil {
		return fmt.Errorf("sending %q: %w", msg, err)
	}
	line, err := ec.reader.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the echo of %q: %w", msg, err)
	}
	if strings.TrimSpace(line) != msg {
		return fmt.Errorf("sent %q, got back %q", msg, line)
	}
	return nil
}

// waitClosed waits up to timeout for the peer to end the connection (EOF or reset).
func (ec *echoConn) waitClosed(timeout time.Duration) error {
	if err := ec.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("setting a deadline: %w", err)
	}
	_, err := ec.reader.ReadString('\n')
	if err == nil {
		return errors.New("read data, want the connection to end")
	}
	if isTimeout(err) {
		return fmt.Errorf("still open after %v", timeout)
	}
	return nil
}

// isTimeout reports a dial or read that got no answer: the packets were dropped.
func isTimeout(err error) bool {
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout()
}

// isRefused reports a connection rejected with a TCP reset or ICMP port unreachable.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// isReset reports a connection that was accepted and then ended without an answer.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// pause waits attemptPause, or returns false when ctx ends first.
func pause(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(attemptPause):
		return true
	}
}

// expectAll polls req until every pod in want has answered. A pod outside want answering
// fails the test at once.
func expectAll(t *testing.T, what string, req request, want []string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	seen := map[string]int{}
	var lastErr error
	for attempts := 1; ; attempts++ {
		r, err := req(ctx)
		switch {
		case err != nil:
			lastErr = err
		case !slices.Contains(want, r.pod):
			t.Fatalf("%s: answered by %s, want only %v", what, r.pod, want)
		default:
			seen[r.pod]++
		}
		if len(seen) == len(want) {
			return
		}
		if !pause(ctx) {
			t.Fatalf("%s: after %d attempts in %v saw %v of %v; last error: %v", what, attempts, timeout, seen, want, lastErr)
		}
	}
}

// expectOnly polls req until it is answered, then makes n more answered attempts (at most n
// failed ones are tolerated after the first answer); every answer must come from a pod in
// allowed. It returns the n+1 replies.
func expectOnly(t *testing.T, what string, req request, allowed []string, n int, timeout time.Duration) []reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var replies []reply
	var lastErr error
	failedAfterFirst := 0
	for tries := 1; len(replies) <= n; tries++ {
		r, err := req(ctx)
		switch {
		case err != nil:
			lastErr = err
			if len(replies) > 0 {
				failedAfterFirst++
			}
		case !slices.Contains(allowed, r.pod):
			t.Fatalf("%s: answered by %s, want only %v", what, r.pod, allowed)
		default:
			replies = append(replies, r)
		}
		if failedAfterFirst > n || !pause(ctx) {
			t.Fatalf("%s: %d answers in %d tries (%d failed after the first answer), want %d; last error: %v",
				what, len(replies), tries, failedAfterFirst, n+1, lastErr)
		}
	}
	return replies
}

// expectFailure polls req until an attempt fails the way accept recognises (described by
// how), then wants one more attempt to fail the same way. An answer fails the test unless
// answersBefore allows answers until the first accepted failure.
func expectFailure(t *testing.T, what string, req request, accept func(error) bool, how string, answersBefore bool, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var lastErr error
	confirmed := 0
	for attempts := 1; confirmed < 2; attempts++ {
		r, err := req(ctx)
		switch {
		case err == nil && (confirmed > 0 || !answersBefore):
			t.Fatalf("%s: answered by %s (client %s), want %s", what, r.pod, r.client, how)
		case err != nil && accept(err) && ctx.Err() == nil:
			confirmed++
			continue
		case err != nil && confirmed > 0:
			t.Fatalf("%s: failed with %v after failing with %v, want %s every time", what, err, lastErr, how)
		}
		lastErr = err
		if !pause(ctx) {
			t.Fatalf("%s: no attempt in %d failed with %s in %v; last error: %v", what, attempts, how, timeout, lastErr)
		}
	}
}

// podSighting is what waitUntilGone and waitUntilBack measure.
type podSighting struct {
	at       time.Time
	attempts int
}

// waitUntilGone polls req until streak attempts in a row were not answered by pod, and
// returns when pod last answered (the zero time if it never did). Failed attempts break the
// streak unless allowErrors.
func waitUntilGone(t *testing.T, what string, req request, pod string, allowErrors bool, streak int, timeout time.Duration) podSighting {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last podSighting
	var lastErr error
	run := 0
	for attempts := 1; run < streak; attempts++ {
		r, err := req(ctx)
		switch {
		case err != nil && !allowErrors:
			lastErr, run = err, 0
		case err == nil && r.pod == pod:
			last, run = podSighting{at: time.Now(), attempts: attempts}, 0
		default:
			run++
		}
		if run < streak && !pause(ctx) {
			t.Fatalf("%s: %s still answered (last at attempt %d of %d) after %v; last error: %v", what, pod, last.attempts, attempts, timeout, lastErr)
		}
	}
	return last
}

// waitUntilBack polls req until pod answers and returns when it did.
func waitUntilBack(t *testing.T, what string, req request, pod string, timeout time.Duration) podSighting {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var lastErr error
	for attempts := 1; ; attempts++ {
		r, err := req(ctx)
		if err == nil && r.pod == pod {
			return podSighting{at: time.Now(), attempts: attempts}
		}
		if err != nil {
			lastErr = err
		}
		if !pause(ctx) {
			t.Fatalf("%s: %s did not answer in %d attempts in %v; last error: %v", what, pod, attempts, timeout, lastErr)
		}
	}
}

// httpStatus GETs url from a namespace and returns the status code.
func httpStatus(ctx context.Context, c *cluster.Cluster, from, url string) (int, error) {
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("building a request for %s: %w", url, err)
	}
	response, err := c.HTTPClient(from, tcpAttemptTimeout).Do(request)
	if err != nil {
		return 0, fmt.Errorf("GET %s from %s: %w", url, from, err)
	}
	defer response.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(response.Body, 64<<10))
	return response.StatusCode, nil
}

// expectHTTPStatus polls url from a namespace until it answers with status want.
func expectHTTPStatus(t *testing.T, c *cluster.Cluster, from, url string, want int, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last string
	for {
		code, err := httpStatus(ctx, c, from, url)
		if err == nil && code == want {
			return
		}
		last = fmt.Sprintf("status %d, error %v", code, err)
		if !pause(ctx) {
			t.Fatalf("GET %s from %s: want status %d within %v; last: %s", url, from, want, timeout, last)
		}
	}
}
