package healthcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// ServiceHealthServer serves the health-check node ports of Services (LoadBalancer Services
// with externalTrafficPolicy=Local): every path answers 200 when the Service has local ready
// endpoints and the proxy is healthy, 503 otherwise, so load balancers only send traffic to
// nodes that can serve it. It is safe for concurrent use.
type ServiceHealthServer struct {
	listenIPs []netip.Addr
	healthy   func() bool
	recorder  func(svc types.NamespacedName, err error)

	mu       sync.RWMutex
	services map[types.NamespacedName]*serviceListeners
	counts   map[types.NamespacedName]int
}

// serviceListeners are the HTTP servers answering for one Service on one port.
type serviceListeners struct {
	port      uint16
	listeners []net.Listener
	servers   []*http.Server
}

// NewServiceHealthServer returns a ServiceHealthServer that listens on each of listenIPs
// (empty: all addresses, both families). An IPv4 address listens with "tcp4" and an IPv6 one
// with "tcp6", so an IPv4 and an IPv6 server given their unspecified addresses can share a
// port. healthy reports the proxy's health (ProxyHealth.Healthy); nil means always healthy.
// recorder, if not nil, is told of every health-check port that failed to open (upstream emits
// a FailedToStartServiceHealthcheck event).
func NewServiceHealthServer(listenIPs []netip.Addr, healthy func() bool, recorder func(svc types.NamespacedName, err error)) *ServiceHealthServer {
	if healthy == nil {
		healthy = func() bool { return true }
	}
	return &ServiceHealthServer{
		listenIPs: slices.Clone(listenIPs),
		healthy:   healthy,
		recorder:  recorder,
		services:  map[types.NamespacedName]*serviceListeners{},
		counts:    map[types.NamespacedName]int{},
	}
}

// SyncServices makes the set of served Services and their ports equal to ports. Services that
// are gone or whose port changed are closed; new ones (and changed ones) are opened. A port
// that fails to open does not stop the others: it is reported to the recorder, retried on the
// next call, and all such failures are returned joined.
func (s *ServiceHealthServer) SyncServices(ports map[types.NamespacedName]uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	for name, svc := range s.services {
		if port, ok := ports[name]; ok && port == svc.port {
			continue
		}
		klog.V(2).InfoS("Closing healthcheck", "service", name, "port", svc.port)
		svc.close(name)
		delete(s.services, name)
	}

	var errs []error
	for name, port := range ports {
		if s.services[name] != nil {
			continue
		}
		klog.V(2).InfoS("Opening healthcheck", "service", name, "port", port)
		svc, err := s.listen(name, port)
		if err != nil {
			err = fmt.Errorf("starting health check for service %s on port %d: %w", name, port, err)
			if s.recorder != nil {
				s.recorder(name, err)
			}
			errs = append(errs, err)
			continue
		}
		s.services[name] = svc
	}
	return errors.Join(errs...)
}

// listenAddrs returns the network and address to listen on for each listen IP.
func (s *ServiceHealthServer) listenAddrs(port uint16) (networks, addrs []string) {
	portStr := strconv.Itoa(int(port))
	if len(s.listenIPs) == 0 {
		return []string{"tcp"}, []string{net.JoinHostPort("", portStr)}
	}
	for _, ip := range s.listenIPs {
		network := "tcp6"
		if ip.Unmap().Is4() {
			network = "tcp4"
			ip = ip.Unmap()
		}
		networks = append(networks, network)
		addrs = append(addrs, net.JoinHostPort(ip.String(), portStr))
	}
	return networks, addrs
}

// listen opens and serves port on every listen address for the Service name; on failure
// whatever was opened is closed again.
func (s *ServiceHealthServer) listen(name types.NamespacedName, port uint16) (*serviceListeners, error) {
	svc := &serviceListeners{port: port}
	networks, addrs := s.listenAddrs(port)
	for i, addr := range addrs {
		ln, err := net.Listen(networks[i], addr)
		if err != nil {
			svc.close(name)
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: serviceHandler{server: s, name: name}}
		svc.listeners = append(svc.listeners, ln)
		svc.servers = append(svc.servers, srv)
		go func() {
			klog.V(3).InfoS("Serving healthcheck", "service", name, "address", ln.Addr())
			// close shuts the listener before the server, so net.ErrClosed is a normal stop too.
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				klog.ErrorS(err, "Healthcheck server stopped", "service", name, "address", ln.Addr())
			}
		}()
	}
	return svc, nil
}

// close stops every server of the Service. The listeners are closed directly, before the
// servers, so the port stops accepting even if a Serve goroutine has not started yet.
func (svc *serviceListeners) close(name types.NamespacedName) {
	for _, ln := range svc.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			klog.ErrorS(err, "Closing healthcheck listener", "service", name, "port", svc.port)
		}
	}
	for _, srv := range svc.servers {
		if err := srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			klog.ErrorS(err, "Closing healthcheck server", "service", name, "port", svc.port)
		}
	}
	svc.listeners, svc.servers = nil, nil
}

// SyncEndpoints sets the number of local ready endpoints of each Service; Services missing
// from counts have none.
func (s *ServiceHealthServer) SyncEndpoints(counts map[types.NamespacedName]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts = make(map[types.NamespacedName]int, len(counts))
	for name, n := range counts {
		if n > 0 {
			s.counts[name] = n
		}
	}
}

// Close closes every health-check listener. A later SyncServices opens them again.
func (s *ServiceHealthServer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, svc := range s.services {
		svc.close(name)
		delete(s.services, name)
	}
}

// serviceBody is the health-check JSON body, as upstream.
type serviceBody struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// serviceHandler answers health checks for one Service.
type serviceHandler struct {
	server *ServiceHealthServer
	name   types.NamespacedName
}

// ServeHTTP answers any path: 200 iff the Service has local endpoints and the proxy is
// healthy, with the endpoint count in X-Load-Balancing-Endpoint-Weight.
func (h serviceHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.server.mu.RLock()
	count := h.server.counts[h.name]
	h.server.mu.RUnlock()
	healthy := h.server.healthy()

	var body serviceBody
	body.Service.Namespace = h.name.Namespace
	body.Service.Name = h.name.Name
	body.LocalEndpoints = count
	body.ServiceProxyHealthy = healthy
	// Upstream writes the body tab-indented, without a trailing newline.
	out, err := json.MarshalIndent(body, "", "\t")
	if err != nil {
		http.Error(w, "encoding health check response", http.StatusInternalServerError)
		return
	}

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	if count > 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write(out)
}
