package proxiertest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
)

// Probe time limits.
const (
	// probeTimeout bounds a probe's send and receive.
	probeTimeout = time.Second
	// connectTimeout bounds a TCP connect. It allows one SYN retransmission (Linux's first
	// retransmission is 1 s after the SYN): an ICMP unreachable that arrives while connect()
	// still holds the socket lock (common on a local veth, especially over IPv6) is recorded
	// only as a soft error, and only the retransmitted SYN's reject fails the connect.
	connectTimeout = 2500 * time.Millisecond
)

// echoServers are the TCP and UDP echo servers of the pods. Each answers every connection or
// datagram with "<own ip:port> <client source ip>".
type echoServers struct {
	mu      sync.Mutex
	closers []io.Closer
	wg      sync.WaitGroup
}

// start opens TCP and UDP listeners on ip:port inside ns and serves them until stop.
func (s *echoServers) start(ns netns.NsHandle, ip netip.Addr, port int32) error {
	addr := netip.AddrPortFrom(ip, uint16(port))
	var tcp *net.TCPListener
	var udp *net.UDPConn
	err := inNS(ns, func() error {
		var err error
		if tcp, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr)); err != nil {
			return fmt.Errorf("listening on tcp %s: %w", addr, err)
		}
		if udp, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr)); err != nil {
			tcp.Close()
			return fmt.Errorf("listening on udp %s: %w", addr, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.closers = append(s.closers, tcp, udp)
	s.mu.Unlock()
	s.wg.Add(2)
	go s.serveTCP(tcp)
	go s.serveUDP(udp, addr)
	return nil
}

// stop closes every listener and waits for the serving goroutines to end.
func (s *echoServers) stop() {
	s.mu.Lock()
	for _, c := range s.closers {
		c.Close()
	}
	s.closers = nil
	s.mu.Unlock()
	s.wg.Wait()
}

// serveTCP answers each connection once and closes it; it ends when ln is closed.
func (s *echoServers) serveTCP(ln *net.TCPListener) {
	defer s.wg.Done()
	for {
		conn, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		own := conn.LocalAddr().(*net.TCPAddr).AddrPort()
		peer := conn.RemoteAddr().(*net.TCPAddr).AddrPort()
		_ = conn.SetDeadline(time.Now().Add(probeTimeout))
		_, _ = fmt.Fprintf(conn, "%s %s\n", unmapped(own), peer.Addr().Unmap())
		conn.Close()
	}
}

// serveUDP answers each datagram; it ends when conn is closed.
func (s *echoServers) serveUDP(conn *net.UDPConn, own netip.AddrPort) {
	defer s.wg.Done()
	buf := make([]byte, 512)
	for {
		_, peer, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		reply := fmt.Sprintf("%s %s\n", own, peer.Addr().Unmap())
		_, _ = conn.WriteToUDPAddrPort([]byte(reply), peer)
	}
}

func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// observation is the outcome of one probe.
type observation struct {
	verdict  Verdict
	endpoint string     // the "ip:port" that answered (Reach)
	seen     netip.Addr // the source address the endpoint saw (Reach)
	own      netip.Addr // the probe's own source address (Reach)
	err      error      // the harness failed; no verdict
}

// probe opens one connection (TCP) or exchange (UDP) from ns, bound to bind when it is valid,
// and classifies it: an answer is Reach, a refusal or ICMP unreachable is Reject, silence
// (or a local netfilter drop, EPERM) is Drop.
func probe(ns netns.NsHandle, proto v1.Protocol, bind netip.Addr, dst netip.AddrPort) observation {
	var obs observation
	err := inNS(ns, func() error {
		obs = probeHere(proto, bind, dst)
		return nil
	})
	if err != nil {
		return observation{err: err}
	}
	return obs
}

// probeHere is probe in the calling thread's namespace.
func probeHere(proto v1.Protocol, bind netip.Addr, dst netip.AddrPort) observation {
	d := net.Dialer{Timeout: connectTimeout}
	network := "tcp"
	switch proto {
	case v1.ProtocolTCP:
		if bind.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(bind, 0))
		}
	case v1.ProtocolUDP:
		network = "udp"
		if bind.IsValid() {
			d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(bind, 0))
		}
	default:
		return observation{err: fmt.Errorf("no kernel probe for protocol %s", proto)}
	}
	conn, err := d.Dial(network, dst.String())
	if err != nil {
		return classified(err, "connecting")
	}
	defer conn.Close()
	own, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return observation{err: fmt.Errorf("parsing the probe's own address: %w", err)}
	}
	if err := conn.SetDeadline(time.Now().Add(probeTimeout)); err != nil {
		return observation{err: fmt.Errorf("setting the probe deadline: %w", err)}
	}
	var reply []byte
	if proto == v1.ProtocolUDP {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			return classified(err, "sending")
		}
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			return classified(err, "receiving")
		}
		reply = buf[:n]
	} else if reply, err = io.ReadAll(io.LimitReader(conn, 512)); err != nil {
		return observation{err: fmt.Errorf("connected to %s but reading the reply failed: %w", dst, err)}
	}
	obs := parseReply(string(reply))
	obs.own = own.Addr().Unmap()
	return obs
}

// classified turns a socket error into a verdict, or into a harness error if it means neither.
func classified(err error, doing string) observation {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH):
		return observation{verdict: Reject}
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout(),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EPERM):
		return observation{verdict: Drop}
	}
	return observation{err: fmt.Errorf("%s: %w", doing, err)}
}

// parseReply parses "<ip:port> <source ip>".
func parseReply(s string) observation {
	fields := strings.Fields(s)
	if len(fields) != 2 {
		return observation{err: fmt.Errorf("unexpected reply %q", s)}
	}
	ep, err := netip.ParseAddrPort(fields[0])
	if err != nil {
		return observation{err: fmt.Errorf("unexpected reply %q: %w", s, err)}
	}
	seen, err := netip.ParseAddr(fields[1])
	if err != nil {
		return observation{err: fmt.Errorf("unexpected reply %q: %w", s, err)}
	}
	return observation{verdict: Reach, endpoint: unmapped(ep).String(), seen: seen.Unmap()}
}
