package userspace

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Bounds of the pause after a failed accept or read (out of file descriptors, for example).
const (
	minRetryBackoff = 5 * time.Millisecond
	maxRetryBackoff = time.Second
)

// nextBackoff doubles a retry pause within its bounds.
func nextBackoff(d time.Duration) time.Duration {
	return min(max(2*d, minRetryBackoff), maxRetryBackoff)
}

// tcpListener accepts one service port's TCP connections.
type tcpListener struct {
	ln    *net.TCPListener
	port  uint16
	pp    *portProxy
	class listenerClass
}

// Port implements listener.
func (l *tcpListener) Port() uint16 { return l.port }

// Close implements listener: open connections are not affected.
func (l *tcpListener) Close() error { return l.ln.Close() }

// serve accepts connections until the listener closes.
func (l *tcpListener) serve() {
	var backoff time.Duration
	for {
		conn, err := l.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = nextBackoff(backoff)
			klog.V(2).InfoS("Accepting a connection failed", "servicePort", l.pp.key.name, "err", err, "retryIn", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		l.pp.acceptTCP(conn, l.class)
	}
}

// acceptTCP takes a connection slot for client and proxies it in its own goroutine; without a
// free slot the client is reset at once.
func (pp *portProxy) acceptTCP(client *net.TCPConn, class listenerClass) {
	if !pp.fwd.tcpSlots.acquire() {
		pp.stats.refused(reasonConnectionLimit)
		resetConn(client)
		return
	}
	go pp.proxyTCP(client, class)
}

// proxyTCP connects client to an endpoint and copies until both sides are done. Without an
// endpoint, or when every dial fails, the client is reset.
func (pp *portProxy) proxyTCP(client *net.TCPConn, class listenerClass) {
	defer pp.fwd.tcpSlots.release()
	clientAddr := addrPortOf(client.RemoteAddr())
	local := addrPortOf(client.LocalAddr())
	candidates := pp.bal.candidates(class.set(local.Addr().IsLoopback()), clientAddr.Addr())
	if len(candidates) == 0 {
		pp.stats.refused(reasonNoEndpoints)
		resetConn(client)
		return
	}
	upstream, ep := pp.dialTCP(candidates, clientAddr.Addr())
	if upstream == nil {
		pp.stats.refused(reasonDialFailed)
		resetConn(client)
		return
	}
	c := &tcpConn{pp: pp, client: client, upstream: upstream, ep: ep}
	if !pp.track(c) {
		c.closeNow()
		return
	}
	defer pp.untrack(c)
	c.relay()
}

// dialTCP dials the candidates in order until one answers; it returns nil when none did.
func (pp *portProxy) dialTCP(candidates []netip.AddrPort, client netip.Addr) (*net.TCPConn, netip.AddrPort) {
	for _, ep := range candidates {
		conn, err := pp.fwd.sockets.dialTCP(pp.fwd.ctx, ep)
		if err == nil {
			pp.bal.connected(client, ep)
			return conn, ep
		}
		pp.stats.dialErrors.Inc()
		pp.bal.failed(client, ep)
		klog.V(2).InfoS("Dialing an endpoint failed", "servicePort", pp.key.name, "endpoint", ep, "err", err)
		if pp.fwd.ctx.Err() != nil {
			break
		}
	}
	return nil, netip.AddrPort{}
}

// tcpConn is one proxied TCP connection.
type tcpConn struct {
	pp               *portProxy
	client, upstream *net.TCPConn
	ep               netip.AddrPort
	// drain is the pending grace period (guarded by pp.mu).
	drain     clock.Timer
	closeOnce sync.Once
}

// endpoint implements flow.
func (c *tcpConn) endpoint() netip.AddrPort { return c.ep }

// endpointGone implements flow: the connection closes after d unless it ends before.
func (c *tcpConn) endpointGone(d time.Duration) {
	if c.drain == nil {
		c.drain = c.pp.fwd.clock.AfterFunc(d, c.closeNow)
	}
}

// stopDrain implements flow.
func (c *tcpConn) stopDrain() {
	if c.drain != nil {
		c.drain.Stop()
		c.drain = nil
	}
}

// closeNow implements flow.
func (c *tcpConn) closeNow() {
	c.closeOnce.Do(func() {
		_ = c.client.Close()
		_ = c.upstream.Close()
	})
}

// relay copies both ways until both directions ended, then closes both connections.
func (c *tcpConn) relay() {
	done := make(chan struct{})
	go c.copyClientToEndpoint(done)
	c.copyHalf(c.client, c.upstream, c.pp.stats.bytesOut)
	<-done
	c.closeNow()
}

// copyClientToEndpoint is a connection's copy goroutine: client to endpoint (the connection's
// own goroutine copies the other way).
func (c *tcpConn) copyClientToEndpoint(done chan<- struct{}) {
	defer close(done)
	c.copyHalf(c.upstream, c.client, c.pp.stats.bytesIn)
}

// copyHalf copies src to dst until src ends, then half-closes dst, so each side sees the
// other's FIN and may keep sending. A failure (a reset, or a close after the grace period)
// ends both directions.
func (c *tcpConn) copyHalf(dst, src *net.TCPConn, counter prometheus.Counter) {
	if err := copyStream(dst, src, counter); errors.Is(err, io.EOF) {
		_ = dst.CloseWrite()
		return
	}
	c.closeNow()
}

// resetConn closes conn with a TCP reset.
func resetConn(conn *net.TCPConn) {
	_ = conn.SetLinger(0)
	_ = conn.Close()
}

// addrPortOf returns the address and port of a TCP or UDP address (zero for others).
func addrPortOf(addr net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := addr.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
