package userspace

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// maxDatagram is the largest UDP payload.
const maxDatagram = 1<<16 - 1

// datagramPool holds the buffers replies are read into. A session takes one only once a reply
// is ready to be read, never while it waits, so idle sessions hold no buffer.
var datagramPool = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// oobSize fits the packet-info control message of either family.
var oobSize = unix.CmsgSpace(unix.SizeofInet6Pktinfo)

// sessionEpoch is the base of the sessions' monotonic activity stamps.
var sessionEpoch = time.Now()

// sessionKey identifies a UDP session: the client, and the address its datagrams were
// redirected to (replies must leave from it for conntrack to restore the service address).
type sessionKey struct {
	client netip.AddrPort
	local  netip.Addr
}

// udpListener receives one service port's UDP datagrams and keeps a session per client.
type udpListener struct {
	conn  *net.UDPConn
	port  uint16
	pp    *portProxy
	class listenerClass

	mu       sync.Mutex
	sessions map[sessionKey]*udpSession
	closed   bool
}

// newUDPListener wraps conn.
func newUDPListener(conn *net.UDPConn, pp *portProxy, class listenerClass) *udpListener {
	return &udpListener{conn: conn, port: addrPortOf(conn.LocalAddr()).Port(), pp: pp, class: class,
		sessions: map[sessionKey]*udpSession{}}
}

// Port implements listener.
func (l *udpListener) Port() uint16 { return l.port }

// Close implements listener: sessions end too, since their replies leave through the socket.
func (l *udpListener) Close() error {
	l.mu.Lock()
	l.closed = true
	sessions := make([]*udpSession, 0, len(l.sessions))
	for _, s := range l.sessions {
		sessions = append(sessions, s)
	}
	l.mu.Unlock()
	err := l.conn.Close()
	for _, s := range sessions {
		s.closeNow()
	}
	return err
}

// serve forwards datagrams until the socket closes.
func (l *udpListener) serve() {
	buf := make([]byte, maxDatagram)
	oob := make([]byte, oobSize)
	var backoff time.Duration
	for {
		n, oobn, _, client, err := l.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = nextBackoff(backoff)
			klog.V(2).InfoS("Receiving a datagram failed", "servicePort", l.pp.key.name, "err", err, "retryIn", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		key := sessionKey{client: netip.AddrPortFrom(client.Addr().Unmap(), client.Port()), local: localAddrOf(oob[:oobn])}
		if s := l.session(key); s != nil {
			s.forward(buf[:n])
		}
	}
}

// session returns the live session of key, or a new one; nil means the datagram is dropped
// (and was counted).
func (l *udpListener) session(key sessionKey) *udpSession {
	l.mu.Lock()
	s := l.sessions[key]
	l.mu.Unlock()
	if s != nil && !s.ended.Load() {
		return s
	}
	pp := l.pp
	if !pp.fwd.udpSlots.acquire() {
		pp.stats.refused(reasonSessionLimit)
		return nil
	}
	s, reason := l.newSession(key)
	if s == nil {
		pp.fwd.udpSlots.release()
		if reason != "" {
			pp.stats.refused(reason)
		}
		return nil
	}
	if !pp.track(s) {
		s.closeNow()
	}
	go s.relayReplies()
	if s.ended.Load() {
		return nil
	}
	return s
}

// newSession connects a session for key to an endpoint and registers it; without one it
// returns the refusal reason ("" when the listener closed meanwhile).
func (l *udpListener) newSession(key sessionKey) (*udpSession, string) {
	pp := l.pp
	candidates := pp.bal.candidates(l.class.set(key.local.IsLoopback()), key.client.Addr())
	if len(candidates) == 0 {
		return nil, reasonNoEndpoints
	}
	var conn *net.UDPConn
	var ep netip.AddrPort
	for _, candidate := range candidates {
		c, err := pp.fwd.sockets.dialUDP(candidate)
		if err == nil {
			conn, ep = c, candidate
			break
		}
		pp.stats.dialErrors.Inc()
		klog.V(2).InfoS("Connecting a UDP session failed", "servicePort", pp.key.name, "endpoint", candidate, "err", err)
	}
	if conn == nil {
		return nil, reasonDialFailed
	}
	pp.bal.connected(key.client.Addr(), ep)
	s := &udpSession{l: l, key: key, conn: conn, ep: ep, oob: replyOOB(key.local)}
	s.touch()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = conn.Close()
		return nil, ""
	}
	l.sessions[key] = s
	return s, ""
}

// forget drops an ended session.
func (l *udpListener) forget(s *udpSession) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions[s.key] == s {
		delete(l.sessions, s.key)
	}
}

// udpSession is one client's UDP flow: a socket connected to its endpoint.
type udpSession struct {
	l    *udpListener
	key  sessionKey
	conn *net.UDPConn
	ep   netip.AddrPort
	// oob makes replies leave from key.local.
	oob []byte
	// lastActive is the time of the last datagram either way, since sessionEpoch.
	lastActive atomic.Int64
	ended      atomic.Bool
}

// endpoint implements flow.
func (s *udpSession) endpoint() netip.AddrPort { return s.ep }

// endpointGone implements flow: a UDP session to a gone endpoint ends at once (as the kernel
// modes delete its conntrack entry), so the client's next datagram picks another endpoint.
func (s *udpSession) endpointGone(time.Duration) { s.closeNow() }

// stopDrain implements flow.
func (s *udpSession) stopDrain() {}

// closeNow implements flow.
func (s *udpSession) closeNow() {
	if s.ended.CompareAndSwap(false, true) {
		_ = s.conn.Close()
	}
}

// touch records activity.
func (s *udpSession) touch() { s.lastActive.Store(int64(time.Since(sessionEpoch))) }

// lastActiveAt returns the time of the last activity.
func (s *udpSession) lastActiveAt() time.Time {
	return sessionEpoch.Add(time.Duration(s.lastActive.Load()))
}

// forward sends a client datagram to the endpoint.
func (s *udpSession) forward(b []byte) {
	n, err := s.conn.Write(b)
	if err != nil {
		s.failed(err)
		return
	}
	s.touch()
	s.l.pp.stats.bytesIn.Add(float64(n))
}

// failed ends the session after a send or receive error; a refusal (ICMP port unreachable)
// counts as a dial error and drops the client's affinity to the endpoint.
func (s *udpSession) failed(err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		pp := s.l.pp
		pp.stats.dialErrors.Inc()
		pp.bal.failed(s.key.client.Addr(), s.ep)
		klog.V(2).InfoS("UDP endpoint refused a datagram; ending the session", "servicePort", pp.key.name, "endpoint", s.ep)
	}
	s.closeNow()
}

// relayReplies sends the endpoint's datagrams to the client until the session is idle for the
// idle timeout, fails or is closed, then releases it.
func (s *udpSession) relayReplies() {
	defer s.finish()
	raw, err := s.conn.SyscallConn()
	if err != nil {
		return
	}
	idle := s.l.pp.fwd.cfg.UDPIdleTimeout
	for {
		if err := s.conn.SetReadDeadline(s.lastActiveAt().Add(idle)); err != nil {
			return
		}
		buf, n, err := readDatagram(raw)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			if time.Since(s.lastActiveAt()) >= idle {
				return
			}
		case err != nil:
			s.failed(err)
			return
		default:
			s.reply((*buf)[:n])
			datagramPool.Put(buf)
		}
	}
}

// reply sends an endpoint datagram to the client from the address the client sent to.
func (s *udpSession) reply(b []byte) {
	if _, _, err := s.l.conn.WriteMsgUDPAddrPort(b, s.oob, s.key.client); err != nil {
		klog.V(4).InfoS("Sending a UDP reply failed", "servicePort", s.l.pp.key.name, "client", s.key.client, "err", err)
		return
	}
	s.touch()
	s.l.pp.stats.bytesOut.Add(float64(len(b)))
}

// finish releases an ended session.
func (s *udpSession) finish() {
	s.closeNow()
	s.l.forget(s)
	s.l.pp.untrack(s)
	s.l.pp.fwd.udpSlots.release()
}

// readDatagram waits for one datagram on a connected socket and reads it into a pooled buffer,
// taken only once the datagram is there.
func readDatagram(raw syscall.RawConn) (*[]byte, int, error) {
	var buf *[]byte
	var n int
	var readErr error
	err := raw.Read(func(fd uintptr) bool {
		b := datagramPool.Get().(*[]byte)
		for {
			n, readErr = unix.Read(int(fd), *b)
			if !errors.Is(readErr, unix.EINTR) {
				break
			}
		}
		if readErr != nil {
			datagramPool.Put(b)
			return !errors.Is(readErr, unix.EAGAIN)
		}
		buf = b
		return true
	})
	if err != nil {
		return nil, 0, err
	}
	if readErr != nil {
		return nil, 0, readErr
	}
	return buf, n, nil
}

// enablePacketInfo makes conn report each datagram's destination address.
func enablePacketInfo(conn *net.UDPConn, v6 bool) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("reaching the UDP socket: %w", err)
	}
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		if v6 {
			sockErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			sockErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
	})
	if err = errors.Join(err, sockErr); err != nil {
		return fmt.Errorf("enabling packet info on the UDP socket: %w", err)
	}
	return nil
}

// localAddrOf returns a received datagram's destination address from its control messages
// (the zero Addr if there is none).
func localAddrOf(oob []byte) netip.Addr {
	for len(oob) > 0 {
		hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		switch {
		case hdr.Level == unix.IPPROTO_IP && hdr.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			return netip.AddrFrom4([4]byte(data[8:12])) // Inet4Pktinfo.Addr: the header's destination
		case hdr.Level == unix.IPPROTO_IPV6 && hdr.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			return netip.AddrFrom16([16]byte(data[:16]))
		}
		oob = rest
	}
	return netip.Addr{}
}

// replyOOB returns the control message that makes a datagram leave from local (nil: routing
// chooses).
func replyOOB(local netip.Addr) []byte {
	switch {
	case !local.IsValid():
		return nil
	case local.Is4():
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: local.As4()})
	default:
		return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: local.As16()})
	}
}
