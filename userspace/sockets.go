package userspace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// sockets creates the proxy's sockets in its network namespace: a socket belongs to the
// namespace it was created in, whatever thread later uses it, so only socket creation has to
// happen on a thread switched into the namespace.
type sockets struct {
	// netNSFd is the namespace (0: the current one).
	netNSFd int
	// dialTimeout bounds one TCP dial.
	dialTimeout time.Duration
}

// inNetNS runs fn with the calling goroutine's thread in the proxy's namespace. It uses a
// goroutine of its own: if the thread cannot be switched back it stays locked and exits with
// that goroutine, so the runtime discards it.
func (s sockets) inNetNS(fn func() error) error {
	if s.netNSFd == 0 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("getting the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(s.netNSFd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering the proxy's network namespace: %w", err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(fnErr, fmt.Errorf("leaving the proxy's network namespace: %w", err))
			return // the thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// listenTCP opens a TCP listener on addr (port 0: the kernel picks one).
func (s sockets) listenTCP(addr netip.AddrPort) (*net.TCPListener, error) {
	var ln *net.TCPListener
	err := s.inNetNS(func() error {
		var err error
		ln, err = net.ListenTCP(networkOf("tcp", addr.Addr()), net.TCPAddrFromAddrPort(addr))
		return err
	})
	return ln, err
}

// listenUDP opens a UDP socket on addr that reports each datagram's destination address.
func (s sockets) listenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	var conn *net.UDPConn
	err := s.inNetNS(func() error {
		var err error
		conn, err = net.ListenUDP(networkOf("udp", addr.Addr()), net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := enablePacketInfo(conn, addr.Addr().Is6()); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return conn, nil
}

// dialTCP connects to ep within the dial timeout, or until ctx ends.
func (s sockets) dialTCP(ctx context.Context, ep netip.AddrPort) (*net.TCPConn, error) {
	if s.netNSFd == 0 {
		d := net.Dialer{Timeout: s.dialTimeout}
		c, err := d.DialContext(ctx, networkOf("tcp", ep.Addr()), ep.String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	return s.dialTCPInNetNS(ctx, ep)
}

// dialTCPInNetNS creates the socket in the namespace and starts a non-blocking connect there,
// then waits for it through the runtime's poller like net.Dialer does, holding no thread.
func (s sockets) dialTCPInNetNS(ctx context.Context, ep netip.AddrPort) (*net.TCPConn, error) {
	f, err := s.connectedSocket(unix.SOCK_STREAM, ep)
	if err != nil {
		return nil, err
	}
	fc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return nil, fmt.Errorf("wrapping the socket to %s: %w", ep, err)
	}
	conn := fc.(*net.TCPConn)
	if err := waitConnected(ctx, conn, s.dialTimeout); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("dial tcp %s: %w", ep, err)
	}
	_ = conn.SetNoDelay(true)
	return conn, nil
}

// dialUDP returns a UDP socket connected to ep.
func (s sockets) dialUDP(ep netip.AddrPort) (*net.UDPConn, error) {
	if s.netNSFd == 0 {
		return net.DialUDP(networkOf("udp", ep.Addr()), nil, net.UDPAddrFromAddrPort(ep))
	}
	f, err := s.connectedSocket(unix.SOCK_DGRAM, ep)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("wrapping the socket to %s: %w", ep, err)
	}
	return fc.(*net.UDPConn), nil
}

// connectedSocket creates a non-blocking socket in the namespace and connects it to ep (a TCP
// connect may still be in progress).
func (s sockets) connectedSocket(sotype int, ep netip.AddrPort) (*os.File, error) {
	domain, addr := unix.AF_INET6, ep.Addr().Unmap()
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(ep.Port()), Addr: addr.As16()}
	if addr.Is4() {
		domain = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(ep.Port()), Addr: addr.As4()}
	}
	fd := -1
	err := s.inNetNS(func() error {
		var err error
		fd, err = unix.Socket(domain, sotype|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("creating a socket for %s: %w", ep, err)
	}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("dial %s: %w", ep, err)
	}
	return os.NewFile(uintptr(fd), "endpoint "+ep.String()), nil
}

// waitConnected waits until conn's non-blocking connect finished, and returns its outcome.
func waitConnected(ctx context.Context, conn *net.TCPConn, timeout time.Duration) error {
	if err := conn.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var connectErr error
	waitErr := raw.Write(func(fd uintptr) bool {
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			connectErr = err
		case soErr != 0:
			connectErr = syscall.Errno(soErr)
		default:
			if _, err := unix.Getpeername(int(fd)); errors.Is(err, unix.ENOTCONN) {
				return false // still connecting: wait until writable
			}
		}
		return true
	})
	if err := errors.Join(waitErr, connectErr); err != nil {
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}
		return err
	}
	return conn.SetWriteDeadline(time.Time{})
}

// networkOf returns "tcp4"/"udp4" or "tcp6"/"udp6" for addr, so v6 sockets are v6 only.
func networkOf(proto string, addr netip.Addr) string {
	if addr.Is4() || addr.Is4In6() {
		return proto + "4"
	}
	return proto + "6"
}

// socketOpener opens real TCP and UDP listeners. SCTP is unsupported: Go has no SCTP sockets
// (and this kernel none either).
type socketOpener struct {
	sockets sockets
}

// Open implements opener.
func (o socketOpener) Open(proto v1.Protocol, addr netip.Addr, pp *portProxy, class listenerClass) (listener, error) {
	bind := netip.AddrPortFrom(addr, 0)
	switch proto {
	case v1.ProtocolTCP:
		ln, err := o.sockets.listenTCP(bind)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", bind, err)
		}
		l := &tcpListener{ln: ln, port: addrPortOf(ln.Addr()).Port(), pp: pp, class: class}
		go l.serve()
		return l, nil
	case v1.ProtocolUDP:
		conn, err := o.sockets.listenUDP(bind)
		if err != nil {
			return nil, fmt.Errorf("listening on %s/udp: %w", bind, err)
		}
		l := newUDPListener(conn, pp, class)
		go l.serve()
		return l, nil
	default:
		return nil, fmt.Errorf("%w: %s", errUnsupportedProtocol, proto)
	}
}
