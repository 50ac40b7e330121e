package userspace

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// tcpHandlerBackend starts a loopback TCP backend running handle for every connection.
func tcpHandlerBackend(t *testing.T, handle func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return addrPortOf(ln.Addr())
}

// dialListener connects to a listener port on 127.0.0.1.
func dialListener(t *testing.T, port uint16) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp4", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

func TestTCPHalfCloseFromTheClient(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	backend := tcpHandlerBackend(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c) // until the client's FIN arrives through the proxy
		_, _ = fmt.Fprintf(c, "got %d", n)
	})
	_, port := webWorld(t, p, capture, nil, backend)
	c := dialListener(t, port)
	if _, err := c.Write(bytes.Repeat([]byte("x"), 1000)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	reply, err := io.ReadAll(c)
	if err != nil || string(reply) != "got 1000" {
		t.Errorf("after half-closing, the client read %q, %v; want the endpoint's answer %q then EOF", reply, err, "got 1000")
	}
}

func TestTCPHalfCloseFromTheEndpoint(t *testing.T) {
	p, capture := newTestProxier(t, Config{}, nil)
	received := make(chan string, 1)
	backend := tcpHandlerBackend(t, func(c *net.TCPConn) {
		_, _ = c.Write([]byte("hello"))
		_ = c.CloseWrite()
		b, _ := io.ReadAll(c)
		received <- string(b)
	})
	_, port := webWorld(t, p, capture, nil, backend)
	c := dialListener(t, port)
	greeting, err := io.ReadAll(c)
	if err != nil || string(greeting) != "hello" {
		t.Fatalf("client read %q, %v; want hello then EOF", greeting, err)
	}
	if _, err := c.Write([]byte("still talking")); err != nil {
		t.Fatalf("writing after the endpoint's FIN: %v", err)
	}
	_ = c.CloseWrite()
	select {
	case got := <-received:
		if got != "still talking" {
			t.Errorf("endpoint received %q after its own FIN, want %q", got, "still talking")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the endpoint never saw the client's data and FIN")
	}
}

func TestTCPLargeTransferBothWaysKeepsIntegrity(t *testing.T) {
	const size = 32 << 20
	p, capture := newTestProxier(t, Config{}, nil)
	backend := tcpHandlerBackend(t, func(c *net.TCPConn) {
		readDone := make(chan []byte, 1)
		go func() {
			h := sha256.New()
			_, _ = io.Copy(h, c)
			readDone <- h.Sum(nil)
		}()
		_, _ = io.CopyN(c, rand.NewChaCha8([32]byte{2}), size)
		_, _ = c.Write(<-readDone)
		_ = c.CloseWrite()
	})
	_, port := webWorld(t, p, capture, nil, backend)
	c := dialListener(t, port)
	writeErr := make(chan error, 1)
	go func() {
		_, err := io.CopyN(c, rand.NewChaCha8([32]byte{1}), size)
		writeErr <- err
		_ = c.CloseWrite()
	}()
	got := sha256.New()
	if _, err := io.CopyN(got, c, size); err != nil {
		t.Fatalf("reading the endpoint's stream: %v", err)
	}
	trailer, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the trailer: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if want := streamHash(2, size); !bytes.Equal(got.Sum(nil), want) {
		t.Errorf("endpoint → client stream corrupted")
	}
	if want := streamHash(1, size); !bytes.Equal(trailer, want) {
		t.Errorf("client → endpoint stream corrupted (endpoint hash %x, want %x)", trailer, want)
	}
	eventually(t, "the connection ends", func() bool { return activeCount(p, webPort) == 0 })
	m := p.fwd.cfg.Metrics
	if in := testutil.ToFloat64(m.UserspaceBytesTotal.WithLabelValues(webPort.String(), "in")); in != size {
		t.Errorf("bytes in %v, want %d", in, size)
	}
	if out := testutil.ToFloat64(m.UserspaceBytesTotal.WithLabelValues(webPort.String(), "out")); out != size+sha256.Size {
		t.Errorf("bytes out %v, want %d", out, size+sha256.Size)
	}
}

// streamHash is the SHA-256 of the first size bytes of the ChaCha8 stream of seed.
func streamHash(seed byte, size int64) []byte {
	h := sha256.New()
	_, _ = io.CopyN(h, rand.NewChaCha8([32]byte{seed}), size)
	return h.Sum(nil)
}

// udpBackend is a loopback UDP server answering "<id> <source> <payload>".
type udpBackend struct {
	addr netip.AddrPort
	mu   sync.Mutex
	// sources are the distinct source addresses seen.
	sources map[netip.AddrPort]int
}

// startUDPBackend starts a UDP backend on 127.0.0.1.
func startUDPBackend(t *testing.T, id string) *udpBackend {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	b := &udpBackend{addr: addrPortOf(conn.LocalAddr()), sources: map[netip.AddrPort]int{}}
	go func() {
		buf := make([]byte, maxDatagram)
		for {
			n, src, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b.mu.Lock()
			b.sources[src]++
			b.mu.Unlock()
			_, _ = conn.WriteToUDPAddrPort(fmt.Appendf(nil, "%s %s %s", id, src, buf[:n]), src)
		}
	}()
	return b
}

// distinctSources returns how many source addresses the backend has seen.
func (b *udpBackend) distinctSources() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.sources)
}

// dnsWorld is a world with Service ns/dns (10.96.0.53:53/UDP) served by backend.
func dnsWorld(t *testing.T, p *Proxier, capture *fakeCapture, backend netip.AddrPort) uint16 {
	t.Helper()
	w := newTestWorld(t, v1.IPv4Protocol)
	w.setService(testService("dns", "10.96.0.53", withPort("dns", v1.ProtocolUDP, 53, 0)))
	w.setSlice(endpointSlice("dns", "dns", v1.ProtocolUDP, testEndpoint{addr: backend}))
	w.sync(p, true)
	return capture.listenerPortOf(t, v1.IPv4Protocol, serviceKey("10.96.0.53", v1.ProtocolUDP, 53))
}

var dnsPort = portName("dns", "dns", v1.ProtocolUDP)

// exchange sends payload on c and returns the reply's fields.
func exchange(t *testing.T, c *net.UDPConn, payload string) []string {
	t.Helper()
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatalf("send: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no reply to %q: %v", payload, err)
	}
	return strings.Fields(string(buf[:n]))
}

func TestUDPSessionIsReusedThenExpiresWhenIdle(t *testing.T) {
	p, capture := newTestProxier(t, Config{UDPIdleTimeout: 300 * time.Millisecond}, nil)
	backend := startUDPBackend(t, "dns")
	port := dnsWorld(t, p, capture, backend.addr)
	c := dialUDPLoopback(t, port)
	var sessionSource string
	for i := range 3 {
		reply := exchange(t, c, fmt.Sprint("q", i))
		if i == 0 {
			sessionSource = reply[1]
		} else if reply[1] != sessionSource {
			t.Errorf("datagram %d reached the endpoint from %s, want the session's %s", i, reply[1], sessionSource)
		}
	}
	if n := activeCount(p, dnsPort); n != 1 {
		t.Errorf("active sessions %v, want 1", n)
	}
	eventually(t, "the idle session expires", func() bool {
		return activeCount(p, dnsPort) == 0 && p.fwd.udpSlots.used.Load() == 0
	})
	exchange(t, c, "again")
	if n := activeCount(p, dnsPort); n != 1 || backend.distinctSources() != 2 {
		t.Errorf("after expiry: %v active sessions and %d session sockets seen, want a new session (1, 2)", n, backend.distinctSources())
	}
}

func TestUDPRepliesComeFromTheAddressTheClientSentTo(t *testing.T) {
	p, capture := newTestProxier(t, Config{ListenAddress: netip.IPv4Unspecified()}, nil)
	backend := startUDPBackend(t, "dns")
	port := dnsWorld(t, p, capture, backend.addr)
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("client socket: %v", err)
	}
	defer client.Close()
	for _, dst := range []string{"127.0.0.3", "127.0.0.1"} {
		to := netip.AddrPortFrom(netip.MustParseAddr(dst), port)
		if _, err := client.WriteToUDPAddrPort([]byte("q"), to); err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
		_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, from, err := client.ReadFromUDPAddrPort(make([]byte, 512))
		if err != nil {
			t.Fatalf("no reply from %s: %v", to, err)
		}
		if from != to {
			t.Errorf("reply to a datagram sent to %s came from %s", to, from)
		}
	}
}

func TestUDPFloodStaysWithinTheSessionCap(t *testing.T) {
	const flows, sessionCap, batch = 10000, 100, 100
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < flows+1000 {
		t.Skipf("needs %d open files for distinct client sockets; the limit is %d", flows+1000, lim.Cur)
	}
	p, capture := newTestProxier(t, Config{MaxUDPSessions: sessionCap, UDPIdleTimeout: time.Minute}, nil)
	backend := startUDPBackend(t, "dns")
	port := dnsWorld(t, p, capture, backend.addr)
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	processed := func() float64 { return activeCount(p, dnsPort) + refusedCount(p, dnsPort, reasonSessionLimit) }
	for sent := 0; sent < flows; sent += batch {
		for range batch {
			// Each flow is its own socket, kept open so that its source port stays distinct.
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatalf("client socket %d: %v", sent, err)
			}
			t.Cleanup(func() { _ = c.Close() })
			if _, err := c.WriteToUDPAddrPort([]byte("flood"), to); err != nil {
				t.Fatalf("send: %v", err)
			}
		}
		eventually(t, fmt.Sprintf("the proxy handled %d flows", sent+batch), func() bool { return processed() == float64(sent+batch) })
		if used := p.fwd.udpSlots.used.Load(); used > sessionCap {
			t.Fatalf("%d sessions after %d flows, above the cap of %d", used, sent+batch, sessionCap)
		}
	}
	if n := activeCount(p, dnsPort); n != sessionCap {
		t.Errorf("active sessions %v, want the cap %d", n, sessionCap)
	}
	if n := refusedCount(p, dnsPort, reasonSessionLimit); n != flows-sessionCap {
		t.Errorf("refused{session_limit} = %v, want %d", n, flows-sessionCap)
	}
	eventually(t, "the endpoint saw every session", func() bool { return backend.distinctSources() == sessionCap })
}
