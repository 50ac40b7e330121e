// Package serve is the test server that pods run: TCP and UDP echo answering with the
// pod name and the client address it saw, and HTTP with health endpoints that can be
// made to fail on request.
package serve

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// Config says what to serve: Name is the pod name in answers, HTTPPort 0 serves no HTTP,
// and DrainDelay is how long to keep serving (with /readyz failing) after ctx ends.
type Config struct {
	Name               string
	TCPPorts, UDPPorts []int
	HTTPPort           int
	DrainDelay         time.Duration
}

// PodName is $POD_NAME, else $HOSTNAME, else the host name.
func PodName() string {
	host, _ := os.Hostname()
	return cmp.Or(os.Getenv("POD_NAME"), os.Getenv("HOSTNAME"), host)
}

// Server is a running test server.
type Server struct {
	cfg                                   Config
	failReadiness, failLiveness, draining atomic.Bool
	exit                                  chan int
	closers                               []func() error
	wg                                    sync.WaitGroup
}

// Run serves until ctx ends (then drains and returns 0) or /exit asks for an exit code.
func Run(ctx context.Context, cfg Config) (int, error) {
	s := &Server{cfg: cfg, exit: make(chan int, 1)}
	defer s.close()
	if err := s.listen(); err != nil {
		return 1, err
	}
	klog.InfoS("Serving", "name", cfg.Name, "tcp", cfg.TCPPorts, "udp", cfg.UDPPorts, "http", cfg.HTTPPort)
	select {
	case code := <-s.exit:
		return code, nil
	case <-ctx.Done():
	}
	s.draining.Store(true)
	klog.InfoS("Draining before exit", "delay", cfg.DrainDelay)
	select {
	case code := <-s.exit:
		return code, nil
	case <-time.After(cfg.DrainDelay):
		return 0, nil
	}
}

func (s *Server) listen() error {
	for _, port := range s.cfg.TCPPorts {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("listening on TCP port %d: %w", port, err)
		}
		s.closers = append(s.closers, l.Close)
		s.wg.Go(func() { s.serveTCP(l) })
	}
	for _, port := range s.cfg.UDPPorts {
		conn, err := net.ListenPacket("udp", ":"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("listening on UDP port %d: %w", port, err)
		}
		s.closers = append(s.closers, conn.Close)
		s.wg.Go(func() { s.serveUDP(conn) })
	}
	if s.cfg.HTTPPort != 0 {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(s.cfg.HTTPPort))
		if err != nil {
			return fmt.Errorf("listening on HTTP port %d: %w", s.cfg.HTTPPort, err)
		}
		srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
		s.closers = append(s.closers, func() error { // lets an /exit answer go out first
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return srv.Shutdown(ctx)
		})
		s.wg.Go(func() { _ = srv.Serve(l) })
	}
	return nil
}

func (s *Server) close() {
	for _, c := range s.closers {
		_ = c()
	}
	s.wg.Wait()
}

func (s *Server) answer(client string) string { return s.cfg.Name + " " + client + "\n" }

// serveTCP answers each connection with a line "<name> <client address>", then echoes
// what the client sends until it closes.
func (s *Server) serveTCP(l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				klog.ErrorS(err, "Accepting TCP connection")
			}
			return
		}
		go func() {
			defer conn.Close()
			if _, err := io.WriteString(conn, s.answer(conn.RemoteAddr().String())); err == nil {
				_, _ = io.Copy(conn, conn)
			}
		}()
	}
}

// serveUDP answers each datagram with "<name> <client address>".
func (s *Server) serveUDP(conn net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		_, addr, err := conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				klog.ErrorS(err, "Reading UDP datagram")
			}
			return
		}
		_, _ = conn.WriteTo([]byte(s.answer(addr.String())), addr)
	}
}

// ServeHTTP answers / with "<name> <client address>", /hostname with the name, /clientip
// with the client address; /healthz fails (500) after /fail or /fail/liveness, /readyz after
// /fail/readiness and while draining, until /recover; /exit?code=N makes Run return N.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	code, body := http.StatusOK, "ok\n"
	switch r.URL.Path {
	case "/":
		body = s.answer(r.RemoteAddr)
	case "/hostname":
		body = s.cfg.Name
	case "/clientip":
		body = r.RemoteAddr
	case "/healthz", "/readyz":
		if s.failLiveness.Load() && r.URL.Path == "/healthz" ||
			(s.failReadiness.Load() || s.draining.Load()) && r.URL.Path == "/readyz" {
			code, body = http.StatusInternalServerError, "failing\n"
		}
	case "/fail/readiness":
		s.failReadiness.Store(true)
	case "/fail/liveness", "/fail":
		s.failLiveness.Store(true)
	case "/recover":
		s.failReadiness.Store(false)
		s.failLiveness.Store(false)
	case "/exit":
		exitCode, _ := strconv.Atoi(r.URL.Query().Get("code"))
		body = fmt.Sprintf("exiting with %d\n", exitCode)
		select {
		case s.exit <- exitCode:
		default:
		}
	default:
		code, body = http.StatusNotFound, "not found\n"
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, body)
}
