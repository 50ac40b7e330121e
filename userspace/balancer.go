package userspace

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// endpointSet names one of a service port's endpoint lists.
type endpointSet int

const (
	// setInternal serves traffic to the ClusterIP, and all traffic of a shared listener.
	setInternal endpointSet = iota
	// setExternal serves traffic from pods or outside to a NodePort, LB IP or externalIP.
	setExternal
	// setExternalFromNode serves traffic the node itself sends to those addresses: upstream
	// short-circuits it to the cluster endpoints even with externalTrafficPolicy Local.
	setExternalFromNode
	// numSets is the number of endpoint sets.
	numSets
)

// endpointSets are a service port's endpoint lists, in the order Choose returns them.
type endpointSets [numSets][]netip.AddrPort

// maxPinsPerPort bounds the session-affinity table of one service port.
const maxPinsPerPort = 1 << 16

// setsFor chooses a service port's endpoint lists with endpoints.Choose.
func setsFor(sp *proxier.ServicePort, eps []endpoints.Endpoint, node endpoints.Node) endpointSets {
	choice := endpoints.Choose(eps, sp.Policy(), node)
	internal, external := choice.Cluster, choice.Cluster
	if sp.InternalPolicyLocal {
		internal = choice.Local
	}
	if sp.ExternalPolicyLocal {
		external = choice.Local
	}
	fromNode := choice.Cluster
	if fromNode == nil {
		fromNode = external
	}
	var sets endpointSets
	for i, list := range [numSets][]endpoints.Endpoint{internal, external, fromNode} {
		for _, ep := range list {
			sets[i] = append(sets[i], ep.AddrPort())
		}
	}
	return sets
}

// needsExternalListener reports whether external traffic of sp must arrive on a listener of
// its own because it goes to other endpoints than ClusterIP traffic.
func needsExternalListener(sp *proxier.ServicePort) bool {
	return sp.ExternallyAccessible() && sp.InternalPolicyLocal != sp.ExternalPolicyLocal
}

// balancer picks endpoints for one service port's new connections: round robin within a set,
// sessionAffinity ClientIP pins per client IP with a sliding timeout, and failover order.
// It is safe for concurrent use.
type balancer struct {
	clock clock.PassiveClock

	mu        sync.Mutex
	sets      endpointSets
	next      [numSets]int
	stickyFor time.Duration // 0: no session affinity
	pins      map[netip.Addr]pin
	lastSweep time.Time
}

// pin is a client's affinity to an endpoint.
type pin struct {
	endpoint netip.AddrPort
	lastUsed time.Time
}

// newBalancer returns a balancer without endpoints.
func newBalancer(c clock.PassiveClock) *balancer {
	return &balancer{clock: c}
}

// update replaces the endpoint sets and the affinity timeout (0: none). Pins are kept unless
// the timeout changed; a pin to an endpoint that left a set is ignored for that set.
func (b *balancer) update(sets endpointSets, stickyFor time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if stickyFor != b.stickyFor {
		b.pins = nil
	}
	b.sets, b.stickyFor = sets, stickyFor
	for i := range b.next {
		if n := len(sets[i]); n > 0 {
			b.next[i] %= n
		} else {
			b.next[i] = 0
		}
	}
}

// candidates returns the endpoints a new connection from client should try, in order: the
// endpoint the client is pinned to (if still in the set), then the set round robin from the
// next position. Every endpoint of the set appears exactly once; nil means no endpoint.
func (b *balancer) candidates(set endpointSet, client netip.Addr) []netip.AddrPort {
	b.mu.Lock()
	defer b.mu.Unlock()
	eps := b.sets[set]
	n := len(eps)
	if n == 0 {
		return nil
	}
	out := make([]netip.AddrPort, 0, n)
	var pinned netip.AddrPort
	if p, ok := b.pins[client]; ok && b.clock.Since(p.lastUsed) < b.stickyFor && slices.Contains(eps, p.endpoint) {
		pinned = p.endpoint
		out = append(out, pinned)
	}
	start := b.next[set]
	if !pinned.IsValid() {
		b.next[set] = (start + 1) % n
	}
	for i := range n {
		if ep := eps[(start+i)%n]; ep != pinned {
			out = append(out, ep)
		}
	}
	return out
}

// connected records that client's connection reached ep: under session affinity the client is
// pinned to ep from now on for the affinity timeout.
func (b *balancer) connected(client netip.Addr, ep netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stickyFor <= 0 {
		return
	}
	now := b.clock.Now()
	if b.pins == nil {
		b.pins = map[netip.Addr]pin{}
	}
	if _, ok := b.pins[client]; (!ok && len(b.pins) >= maxPinsPerPort) || now.Sub(b.lastSweep) >= b.stickyFor {
		b.evictPins(now)
	}
	b.pins[client] = pin{endpoint: ep, lastUsed: now}
}

// failed records that a dial from client's connection to ep failed: a pin to ep is dropped.
func (b *balancer) failed(client netip.Addr, ep netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.pins[client]; ok && p.endpoint == ep {
		delete(b.pins, client)
	}
}

// evictPins drops expired pins (so the table does not keep clients that went away) and, if
// the table is still full, arbitrary pins until there is room for one more.
func (b *balancer) evictPins(now time.Time) {
	for client, p := range b.pins {
		if now.Sub(p.lastUsed) >= b.stickyFor {
			delete(b.pins, client)
		}
	}
	b.lastSweep = now
	for client := range b.pins {
		if len(b.pins) < maxPinsPerPort {
			break
		}
		delete(b.pins, client)
	}
}

// live returns every endpoint of every set.
func (b *balancer) live() map[netip.AddrPort]bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[netip.AddrPort]bool{}
	for _, set := range b.sets {
		for _, ep := range set {
			out[ep] = true
		}
	}
	return out
}

// serves reports whether ep is in some set.
func (b *balancer) serves(ep netip.AddrPort) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, set := range b.sets {
		if slices.Contains(set, ep) {
			return true
		}
	}
	return false
}
