package userspace

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// Reasons of UserspaceRefusedTotal.
const (
	reasonNoEndpoints     = "no_endpoints"
	reasonConnectionLimit = "connection_limit"
	reasonSessionLimit    = "session_limit"
	reasonDialFailed      = "dial_failed"
)

// errUnsupportedProtocol is returned by an opener for a protocol this mode cannot proxy.
var errUnsupportedProtocol = errors.New("protocol not supported by the userspace proxy")

// portKey identifies a service port of one IP family.
type portKey struct {
	family v1.IPFamily
	name   endpoints.ServicePortName
}

// listenerClass says which traffic of a service port a listener receives.
type listenerClass int

const (
	// classInternal receives ClusterIP traffic, and all traffic when the port has one listener.
	classInternal listenerClass = iota
	// classExternal receives NodePort, externalIP and LB IP traffic when it needs other
	// endpoints than ClusterIP traffic.
	classExternal
)

// set returns the endpoint set for a connection on a listener of class c; fromNode says the
// connection was made by the node itself (it arrived on a loopback address).
func (c listenerClass) set(fromNode bool) endpointSet {
	switch {
	case c == classInternal:
		return setInternal
	case fromNode:
		return setExternalFromNode
	default:
		return setExternal
	}
}

// listener is one open service-port listener.
type listener interface {
	// Port is the port the listener is bound to.
	Port() uint16
	// Close stops accepting and closes the socket; UDP sessions end with it.
	Close() error
}

// opener opens the listeners of service ports; the real one is socketOpener.
type opener interface {
	// Open starts a listener for pp's traffic of class on an unused port of addr. It returns an
	// error wrapping errUnsupportedProtocol for a protocol the mode cannot proxy.
	Open(proto v1.Protocol, addr netip.Addr, pp *portProxy, class listenerClass) (listener, error)
}

// flow is one proxied TCP connection or UDP session.
type flow interface {
	// endpoint is where the flow goes.
	endpoint() netip.AddrPort
	// endpointGone is called when the endpoint left every set or the service port was removed:
	// a TCP connection closes after the grace period d, a UDP session at once. It must not block.
	endpointGone(d time.Duration)
	// stopDrain cancels a pending grace period (the endpoint came back, or the flow ended).
	stopDrain()
	// closeNow ends the flow at once. It must not block.
	closeNow()
}

// slots bounds a number of concurrent things.
type slots struct {
	used atomic.Int64
	max  int64
}

// acquire takes a slot, or reports that none is free.
func (s *slots) acquire() bool {
	if s.used.Add(1) > s.max {
		s.used.Add(-1)
		return false
	}
	return true
}

// release returns a slot.
func (s *slots) release() { s.used.Add(-1) }

// forwarder is what every service port's connections share.
type forwarder struct {
	cfg                Config
	clock              clock.WithDelayedExecution
	sockets            sockets
	opener             opener
	tcpSlots, udpSlots slots
	// ctx ends when the Proxier closes: pending dials give up.
	ctx context.Context
}

// portStats are one service port's metric series.
type portStats struct {
	metrics           *metrics.Metrics
	service           string
	active            prometheus.Gauge
	bytesIn, bytesOut prometheus.Counter
	dialErrors        prometheus.Counter
}

// newPortStats resolves the series of the service port named name.
func newPortStats(m *metrics.Metrics, name endpoints.ServicePortName) portStats {
	service := name.String()
	return portStats{
		metrics:    m,
		service:    service,
		active:     m.UserspaceActiveConnections.WithLabelValues(service),
		bytesIn:    m.UserspaceBytesTotal.WithLabelValues(service, "in"),
		bytesOut:   m.UserspaceBytesTotal.WithLabelValues(service, "out"),
		dialErrors: m.UserspaceDialErrorsTotal.WithLabelValues(service),
	}
}

// refused counts a refused connection or datagram.
func (s portStats) refused(reason string) {
	s.metrics.UserspaceRefusedTotal.WithLabelValues(s.service, reason).Inc()
}

// deleteServiceSeries drops every userspace series of service (a removed service port).
func deleteServiceSeries(m *metrics.Metrics, service string) {
	labels := prometheus.Labels{metrics.LabelService: service}
	m.UserspaceActiveConnections.DeletePartialMatch(labels)
	m.UserspaceBytesTotal.DeletePartialMatch(labels)
	m.UserspaceDialErrorsTotal.DeletePartialMatch(labels)
	m.UserspaceRefusedTotal.DeletePartialMatch(labels)
}

// portProxy proxies one service port of one family: its listeners, its endpoint choice and
// its open flows.
type portProxy struct {
	key   portKey
	fwd   *forwarder
	stats portStats
	bal   *balancer

	mu        sync.Mutex
	spec      *proxier.ServicePort
	listeners [2]listener // by listenerClass; classExternal is nil when one listener serves all
	// flows maps each open flow to whether its grace period runs.
	flows map[flow]bool
	// removed: the port is gone, its flows drain; closed: its flows are closed.
	removed, closed bool
}

// newPortProxy returns a port proxy without listeners.
func newPortProxy(key portKey, fwd *forwarder) *portProxy {
	return &portProxy{
		key:   key,
		fwd:   fwd,
		stats: newPortStats(fwd.cfg.Metrics, key.name),
		bal:   newBalancer(fwd.clock),
		flows: map[flow]bool{},
	}
}

// update applies a new spec and endpoints: listeners are opened or closed as the port's
// traffic policies need, endpoint sets recomputed, flows to endpoints that left start their
// grace period.
func (pp *portProxy) update(sp *proxier.ServicePort, eps []endpoints.Endpoint, node endpoints.Node) error {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if err := pp.openListeners(sp); err != nil {
		return err
	}
	pp.spec = sp
	var sticky time.Duration
	if sp.ClientIPAffinity {
		sticky = time.Duration(sp.StickyMaxAgeSeconds) * time.Second
	}
	pp.bal.update(setsFor(sp, eps, node), sticky)
	pp.reviewFlows()
	return nil
}

// openListeners makes the listeners match sp's needs.
func (pp *portProxy) openListeners(sp *proxier.ServicePort) error {
	addr := pp.fwd.cfg.listenAddr(pp.key.family)
	if pp.listeners[classInternal] == nil {
		l, err := pp.fwd.opener.Open(sp.Protocol, addr, pp, classInternal)
		if err != nil {
			return fmt.Errorf("opening a listener for %s: %w", pp.key.name, err)
		}
		pp.listeners[classInternal] = l
	}
	switch ext := pp.listeners[classExternal]; {
	case needsExternalListener(sp) && ext == nil:
		l, err := pp.fwd.opener.Open(sp.Protocol, addr, pp, classExternal)
		if err != nil {
			return fmt.Errorf("opening an external-traffic listener for %s: %w", pp.key.name, err)
		}
		pp.listeners[classExternal] = l
	case !needsExternalListener(sp) && ext != nil:
		_ = ext.Close()
		pp.listeners[classExternal] = nil
	}
	return nil
}

// captureKeys returns the capture elements of the port as it is now.
func (pp *portProxy) captureKeys() map[captureKey]uint16 {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.spec == nil || pp.listeners[classInternal] == nil {
		return nil
	}
	internal := pp.listeners[classInternal].Port()
	external := internal
	if l := pp.listeners[classExternal]; l != nil {
		external = l.Port()
	}
	return captureKeysOf(pp.spec, internal, external)
}

// reviewFlows starts the grace period of flows whose endpoint left every set, and stops it for
// those whose endpoint came back. Call with pp.mu held.
func (pp *portProxy) reviewFlows() {
	if len(pp.flows) == 0 || pp.removed {
		return
	}
	live := pp.bal.live()
	for f, draining := range pp.flows {
		switch alive := live[f.endpoint()]; {
		case !alive && !draining:
			f.endpointGone(pp.fwd.cfg.DrainTimeout)
			pp.flows[f] = true
		case alive && draining:
			f.stopDrain()
			pp.flows[f] = false
		}
	}
}

// track registers a new flow; false means the proxy closed and the caller must close it.
func (pp *portProxy) track(f flow) bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.closed {
		return false
	}
	pp.flows[f] = false
	if pp.removed || !pp.bal.serves(f.endpoint()) {
		f.endpointGone(pp.fwd.cfg.DrainTimeout)
		pp.flows[f] = true
	}
	pp.stats.active.Inc()
	return true
}

// untrack forgets an ended flow.
func (pp *portProxy) untrack(f flow) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if _, ok := pp.flows[f]; !ok {
		return
	}
	delete(pp.flows, f)
	f.stopDrain()
	pp.stats.active.Dec()
}

// shutdown closes the listeners; open flows get their grace period (drain) or end now.
func (pp *portProxy) shutdown(drain bool) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	for i, l := range pp.listeners {
		if l != nil {
			_ = l.Close()
			pp.listeners[i] = nil
		}
	}
	pp.removed = true
	pp.closed = pp.closed || !drain
	for f, draining := range pp.flows {
		switch {
		case !drain:
			f.closeNow()
		case !draining:
			f.endpointGone(pp.fwd.cfg.DrainTimeout)
			pp.flows[f] = true
		}
	}
}

// flowCount returns the number of open flows.
func (pp *portProxy) flowCount() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return len(pp.flows)
}

// listenerPorts returns the ports of the open listeners (for tests).
func (pp *portProxy) listenerPorts() (internal, external uint16) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if l := pp.listeners[classInternal]; l != nil {
		internal = l.Port()
	}
	if l := pp.listeners[classExternal]; l != nil {
		external = l.Port()
	}
	return internal, external
}
