package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// Polling for reachability: a new connection attempt every pollInterval (a retransmitted SYN
// keeps the conntrack entry of its first try, so only new connections see new rules), each
// given attemptTimeout. Attempts to a Service not programmed yet time out (their SYNs die in
// the pod namespace), so pollInFlight must exceed attemptTimeout/pollInterval: with fewer
// slots the poll would stall until the oldest attempts time out and report late.
const (
	pollInterval   = 20 * time.Millisecond
	attemptTimeout = time.Second
	pollInFlight   = int(attemptTimeout/pollInterval) + 14
)

// errCapped marks a measurement that hit its time cap.
var errCapped = errors.New("over the time cap")

// errProxyExited marks a measurement ended by the proxy process exiting.
var errProxyExited = errors.New("the proxy exited")

// waitReachable polls addr (a ClusterIP:port on the echo server) from the bench node until an
// echo round trip succeeds, and returns when that happened. It fails with errCapped when ctx
// ends and with errProxyExited when proxyDone closes first.
func waitReachable(ctx context.Context, c *cluster.Cluster, addr string, proxyDone <-chan struct{}) (time.Time, error) {
	attempts, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	reached := make(chan time.Time, 1)
	slots := make(chan struct{}, pollInFlight)
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("reaching %s: %w", addr, errCapped)
		case <-proxyDone:
			return time.Time{}, fmt.Errorf("reaching %s: %w", addr, errProxyExited)
		case at := <-reached:
			return at, nil
		case <-ticker.C:
			select {
			case slots <- struct{}{}:
			default:
				continue // every slot busy (cannot happen with pollInFlight's margin)
			}
			wg.Go(func() {
				defer func() { <-slots }()
				if echoOnce(attempts, c, addr) == nil {
					select {
					case reached <- time.Now():
					default:
					}
				}
			})
		}
	}
}

// echoOnce makes one new connection from the bench node to addr and checks that the echo
// server answers.
func echoOnce(ctx context.Context, c *cluster.Cluster, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	conn, err := c.DialContext(ctx, benchNode, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	return pingPong(conn)
}

// pingPong writes a short message on conn and reads the same bytes back.
func pingPong(conn net.Conn) error {
	const message = "ping"
	if _, err := io.WriteString(conn, message); err != nil {
		return fmt.Errorf("writing to %s: %w", conn.RemoteAddr(), err)
	}
	reply := make([]byte, len(message))
	if _, err := io.ReadFull(conn, reply); err != nil {
		return fmt.Errorf("reading from %s: %w", conn.RemoteAddr(), err)
	}
	if string(reply) != message {
		return fmt.Errorf("echo from %s: got %q, want %q", conn.RemoteAddr(), reply, message)
	}
	return nil
}

// connectLatency connects n times, one after another, from the bench node to addr and returns
// the median time the TCP handshake took (the first packet's trip through the proxy's rules
// and back), in microseconds, with the minimum as its note. The connect is a blocking system
// call on a thread inside the node's namespace, so no Go scheduler wake-up is counted.
func connectLatency(c *cluster.Cluster, addr string, n int) figure {
	samples, err := connectSamples(c, addr, n)
	if err != nil {
		return failedFigure(err)
	}
	sorted := slices.Sorted(slices.Values(samples))
	klog.V(1).InfoS("Connect latency", "addr", addr, "min", sorted[0], "p25", sorted[len(sorted)/4],
		"median", median(sorted), "p75", sorted[len(sorted)*3/4], "max", sorted[len(sorted)-1])
	return measuredFigure(median(sorted), fmt.Sprintf("min %.0f", sorted[0]))
}

// connectSamples makes the n connections of connectLatency and returns their handshake times
// in microseconds; it fails when fewer than half succeed.
func connectSamples(c *cluster.Cluster, addr string, n int) ([]float64, error) {
	target, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", addr, err)
	}
	var samples []float64
	failures := 0
	err = inNamespace(c.NodeNS(benchNode), func() error {
		for range n {
			took, err := blockingConnect(target, 2*time.Second)
			if err != nil {
				failures++
				continue
			}
			samples = append(samples, float64(took.Nanoseconds())/1000)
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(samples) < (n+1)/2 {
		return nil, fmt.Errorf("connecting to %s: %d of %d connections failed", addr, failures, n)
	}
	return samples, nil
}

// blockingConnect opens a TCP socket, connects it to target with a blocking connect(2)
// (bounded by timeout through SO_SNDTIMEO), closes it and returns how long connect took.
func blockingConnect(target netip.AddrPort, timeout time.Duration) (time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening a socket: %w", err)
	}
	defer unix.Close(fd)
	// Close with a reset: no TIME_WAIT socket is left behind (see oneByteRoundTrip).
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return 0, fmt.Errorf("setting SO_LINGER: %w", err)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return 0, fmt.Errorf("setting the connect timeout: %w", err)
	}
	sa := &unix.SockaddrInet4{Port: int(target.Port()), Addr: target.Addr().As4()}
	start := time.Now()
	err = unix.Connect(fd, sa)
	took := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("connecting to %s: %w", target, err)
	}
	return took, nil
}

// throughput sends size bytes over one connection from the bench node to addr (the sink) and
// returns MiB/s, counted from the dial to the sink's confirmation of the byte count.
func throughput(c *cluster.Cluster, addr string, size int64, limit time.Duration) (float64, error) {
	var rate float64
	err := inNamespace(c.NodeNS(benchNode), func() error {
		start := time.Now()
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return fmt.Errorf("connecting to the sink %s: %w", addr, err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(start.Add(limit))
		chunk := make([]byte, 1<<20)
		for sent := int64(0); sent < size; sent += int64(len(chunk)) {
			if _, err := conn.Write(chunk[:min(int64(len(chunk)), size-sent)]); err != nil {
				return fmt.Errorf("sending to the sink %s: %w", addr, err)
			}
		}
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			return fmt.Errorf("closing the sending side: %w", err)
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the sink's count: %w", err)
		}
		if got, _ := strconv.ParseInt(strings.TrimSpace(line), 10, 64); got != size {
			return fmt.Errorf("the sink received %d bytes, want %d", got, size)
		}
		rate = float64(size) / (1 << 20) / time.Since(start).Seconds()
		return nil
	})
	return rate, err
}

// connectionRate runs workers clients on the bench node for duration, each making new
// connections to addr one after another (connect, one byte echoed, close), and returns the
// completed connections per second.
func connectionRate(c *cluster.Cluster, addr string, workers int, duration time.Duration) (float64, error) {
	var done, failed atomic.Int64
	start := time.Now()
	deadline := start.Add(duration)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			_ = inNamespace(c.NodeNS(benchNode), func() error {
				for time.Now().Before(deadline) && failed.Load() < 1000 {
					if oneByteRoundTrip(addr) != nil {
						failed.Add(1)
						continue
					}
					done.Add(1)
				}
				return nil
			})
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	if failed.Load() > done.Load()/100 {
		return 0, fmt.Errorf("connection rate to %s: %d of %d connections failed", addr, failed.Load(), failed.Load()+done.Load())
	}
	return float64(done.Load()) / elapsed, nil
}

// oneByteRoundTrip connects to the echo server at addr, has one byte echoed and closes with a
// reset. Closing with a FIN would leave thousands of TIME_WAIT sockets towards the same
// ClusterIP, which slow down the port search of every later connect(2) to it by about a
// millisecond and so would distort the connect-latency figures measured after this one.
func oneByteRoundTrip(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetLinger(0)
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	buf := []byte{'x'}
	if _, err := conn.Write(buf); err != nil {
		return err
	}
	_, err = io.ReadFull(conn, buf)
	return err
}

// median returns the middle value of samples (the mean of the middle two for an even count).
func median(samples []float64) float64 {
	if len(samples) == 0 {
		return 0
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	mid := len(sorted) / 2
	if len(sorted)%2 == 0 {
		return (sorted[mid-1] + sorted[mid]) / 2
	}
	return sorted[mid]
}
