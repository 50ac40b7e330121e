package endpoints

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"unique"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	utilnet "k8s.io/utils/net"
)

// SliceCache holds the EndpointSlices of one IP family, as seen by one node, in a compact form
// and merges them per service on demand. It is safe for concurrent use.
type SliceCache struct {
	family   v1.IPFamily
	nodeName string

	mu sync.Mutex
	// services maps each service to its slices, in the order they were first added.
	services map[types.NamespacedName][]*cachedSlice
}

// cachedSlice is the part of one EndpointSlice that endpoint choice needs.
type cachedSlice struct {
	name      string
	ports     []slicePort
	endpoints []sliceEndpoint
}

// slicePort is one usable entry of EndpointSlice.ports.
type slicePort struct {
	name     string
	protocol v1.Protocol
	port     int32
}

// sliceEndpoint is one usable entry of EndpointSlice.endpoints.
type sliceEndpoint struct {
	addr     netip.Addr
	nodeName string
	// hints is nil when the endpoint has neither zone nor node hints; it is never modified once
	// built, so Endpoints handed out share it.
	hints *Hints
	flags endpointFlags
}

// endpointFlags packs an endpoint's conditions and locality.
type endpointFlags uint8

const (
	flagReady endpointFlags = 1 << iota
	flagServing
	flagTerminating
	flagLocal
)

// NewSliceCache returns an empty cache for EndpointSlices of the given family (IPv4 or IPv6);
// nodeName is this proxy's node, used to mark endpoints Local.
func NewSliceCache(family v1.IPFamily, nodeName string) *SliceCache {
	return &SliceCache{
		family:   family,
		nodeName: nodeName,
		services: make(map[types.NamespacedName][]*cachedSlice),
	}
}

// Update records an added or updated slice (removed=false) or a deleted one (removed=true) and
// returns the slice's service and whether that service's endpoints may have changed. Slices of
// another address type, slices without the kubernetes.io/service-name label or without a name
// or namespace, updates that change nothing endpoint choice uses, and removals of unknown
// slices all return changed=false; the service name is zero for slices that are ignored
// outright.
func (c *SliceCache) Update(slice *discovery.EndpointSlice, removed bool) (svc types.NamespacedName, changed bool) {
	if slice == nil || string(slice.AddressType) != string(c.family) {
		return types.NamespacedName{}, false
	}
	serviceName := slice.Labels[discovery.LabelServiceName]
	if serviceName == "" {
		klog.InfoS("Ignoring EndpointSlice without service name label",
			"endpointSlice", klog.KObj(slice), "label", discovery.LabelServiceName)
		return types.NamespacedName{}, false
	}
	if slice.Name == "" || slice.Namespace == "" {
		klog.InfoS("Ignoring EndpointSlice without name or namespace", "endpointSlice", klog.KObj(slice))
		return types.NamespacedName{}, false
	}
	svc = types.NamespacedName{Namespace: slice.Namespace, Name: serviceName}
	if removed {
		return svc, c.remove(svc, slice.Name)
	}
	return svc, c.store(svc, c.compact(slice))
}

// remove forgets the named slice of svc and reports whether it was known.
func (c *SliceCache) remove(svc types.NamespacedName, sliceName string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	stored := c.services[svc]
	i := slices.IndexFunc(stored, func(s *cachedSlice) bool { return s.name == sliceName })
	if i < 0 {
		return false
	}
	stored = slices.Delete(stored, i, i+1)
	if len(stored) == 0 {
		delete(c.services, svc)
	} else {
		c.services[svc] = stored
	}
	return true
}

// store adds or replaces a slice of svc and reports whether anything changed.
func (c *SliceCache) store(svc types.NamespacedName, slice *cachedSlice) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	stored := c.services[svc]
	i := slices.IndexFunc(stored, func(s *cachedSlice) bool { return s.name == slice.name })
	if i < 0 {
		c.services[svc] = append(stored, slice)
		return true
	}
	if stored[i].equal(slice) {
		return false
	}
	stored[i] = slice
	return true
}

// compact converts an API EndpointSlice to its cached form, skipping (with a log line) ports and
// endpoints that cannot be used.
func (c *SliceCache) compact(slice *discovery.EndpointSlice) *cachedSlice {
	out := &cachedSlice{name: slice.Name}
	for _, port := range slice.Ports {
		if port.Name == nil {
			klog.V(2).InfoS("Ignoring EndpointSlice port with nil name", "endpointSlice", klog.KObj(slice))
			continue
		}
		if port.Port == nil || *port.Port == 0 {
			klog.V(2).InfoS("Ignoring EndpointSlice port without a port number",
				"endpointSlice", klog.KObj(slice), "portName", *port.Name)
			continue
		}
		protocol := v1.ProtocolTCP
		if port.Protocol != nil {
			protocol = *port.Protocol
		}
		out.ports = append(out.ports, slicePort{name: *port.Name, protocol: protocol, port: *port.Port})
	}
	if len(out.ports) == 0 {
		// Without ports no endpoint of this slice can appear in EndpointsFor.
		return out
	}
	out.endpoints = make([]sliceEndpoint, 0, len(slice.Endpoints))
	for i := range slice.Endpoints {
		if ep, ok := c.compactEndpoint(slice, &slice.Endpoints[i]); ok {
			out.endpoints = append(out.endpoints, ep)
		}
	}
	return out
}

// compactEndpoint converts one endpoint of slice; ok is false (after a log line) when it has
// no usable address of this cache's family.
func (c *SliceCache) compactEndpoint(slice *discovery.EndpointSlice, ep *discovery.Endpoint) (sliceEndpoint, bool) {
	if len(ep.Addresses) == 0 {
		klog.V(2).InfoS("Ignoring EndpointSlice endpoint without addresses", "endpointSlice", klog.KObj(slice))
		return sliceEndpoint{}, false
	}
	addr, ok := netip.AddrFromSlice(utilnet.ParseIPSloppy(ep.Addresses[0]))
	if !ok {
		klog.InfoS("Ignoring EndpointSlice endpoint with unparsable address",
			"endpointSlice", klog.KObj(slice), "address", ep.Addresses[0])
		return sliceEndpoint{}, false
	}
	addr = addr.Unmap()
	if (c.family == v1.IPv6Protocol) != addr.Is6() {
		klog.InfoS("Ignoring EndpointSlice endpoint whose address is not of the slice's family",
			"endpointSlice", klog.KObj(slice), "address", ep.Addresses[0], "family", c.family)
		return sliceEndpoint{}, false
	}

	out := sliceEndpoint{addr: addr, hints: compactHints(ep.Hints)}
	if ep.NodeName != nil && *ep.NodeName != "" {
		out.nodeName = intern(*ep.NodeName)
		if *ep.NodeName == c.nodeName {
			out.flags |= flagLocal
		}
	}
	if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
		out.flags |= flagReady
	}
	if ep.Conditions.Serving == nil || *ep.Conditions.Serving {
		out.flags |= flagServing
	}
	if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
		out.flags |= flagTerminating
	}
	return out, true
}

// compactHints converts API hints, returning nil when there are none.
func compactHints(hints *discovery.EndpointHints) *Hints {
	if hints == nil || (len(hints.ForZones) == 0 && len(hints.ForNodes) == 0) {
		return nil
	}
	out := &Hints{}
	if len(hints.ForZones) > 0 {
		out.Zones = make([]string, len(hints.ForZones))
		for i, zone := range hints.ForZones {
			out.Zones[i] = intern(zone.Name)
		}
	}
	if len(hints.ForNodes) > 0 {
		out.Nodes = make([]string, len(hints.ForNodes))
		for i, node := range hints.ForNodes {
			out.Nodes[i] = intern(node.Name)
		}
	}
	return out
}

// intern returns the canonical copy of s, so that the many endpoints naming the same node or
// zone share one string.
func intern(s string) string { return unique.Make(s).Value() }

// equal reports whether two cached slices would yield the same endpoints.
func (s *cachedSlice) equal(other *cachedSlice) bool {
	return s.name == other.name &&
		slices.Equal(s.ports, other.ports) &&
		slices.EqualFunc(s.endpoints, other.endpoints, sliceEndpoint.equal)
}

// equal reports whether two cached endpoints are identical.
func (e sliceEndpoint) equal(other sliceEndpoint) bool {
	if e.addr != other.addr || e.nodeName != other.nodeName || e.flags != other.flags {
		return false
	}
	if e.hints == nil || other.hints == nil {
		return e.hints == other.hints
	}
	return slices.Equal(e.hints.Zones, other.hints.Zones) && slices.Equal(e.hints.Nodes, other.hints.Nodes)
}

// PortEndpoints are the endpoints of one service port.
type PortEndpoints struct {
	// Name is the service port (port name and protocol).
	Name ServicePortName
	// Endpoints are sorted by String().
	Endpoints []Endpoint
}

// EndpointsFor merges every slice of svc into one endpoint list per service port (port name and
// protocol), each sorted by String(). An ip:port present in several slices (or twice in one)
// appears once: a later non-terminating entry replaces an earlier one, a terminating one never
// does. It returns nil for unknown services. The returned hint slices are shared with the cache
// and must not be modified.
func (c *SliceCache) EndpointsFor(svc types.NamespacedName) map[ServicePortName][]Endpoint {
	lists := c.PortEndpointsFor(svc)
	if lists == nil {
		return nil
	}
	out := make(map[ServicePortName][]Endpoint, len(lists))
	for _, l := range lists {
		out[l.Name] = l.Endpoints
	}
	return out
}

// PortEndpointsFor is EndpointsFor as a list sorted by port name and protocol: the compact form
// the tracker keeps (a map per Service cost more than its endpoints at 10,000 Services).
func (c *SliceCache) PortEndpointsFor(svc types.NamespacedName) []PortEndpoints {
	// A stored slice is never modified (an update replaces it) but the list holding them is:
	// copy the list and merge without the lock, so that concurrent calls do not wait.
	c.mu.Lock()
	stored := slices.Clone(c.services[svc])
	c.mu.Unlock()
	if len(stored) == 0 {
		return nil
	}
	var out []PortEndpoints
	for _, slice := range stored {
		for _, port := range slice.ports {
			name := ServicePortName{NamespacedName: svc, Port: port.name, Protocol: port.protocol}
			if !slices.ContainsFunc(out, func(l PortEndpoints) bool { return l.Name == name }) {
				out = append(out, PortEndpoints{Name: name})
			}
		}
	}
	for i := range out {
		out[i].Endpoints = mergedEndpoints(stored, out[i].Name)
	}
	out = slices.DeleteFunc(out, func(l PortEndpoints) bool { return len(l.Endpoints) == 0 })
	if len(out) == 0 {
		return nil
	}
	slices.SortFunc(out, func(a, b PortEndpoints) int { return CompareNames(a.Name, b.Name) })
	return slices.Clip(out)
}

// mergedEndpoints returns the deduplicated, sorted endpoints of one port over every slice, in
// storage sized exactly (the tracker keeps these lists: append's spare capacity was once half
// of its memory).
func mergedEndpoints(stored []*cachedSlice, name ServicePortName) []Endpoint {
	size := 0
	for _, slice := range stored {
		if _, ok := slice.port(name); ok {
			size += len(slice.endpoints)
		}
	}
	if size == 0 {
		return nil
	}
	eps := make([]Endpoint, 0, size)
	for _, slice := range stored {
		if number, ok := slice.port(name); ok {
			for _, ep := range slice.endpoints {
				eps = append(eps, ep.toEndpoint(number))
			}
		}
	}
	eps = dedupSorted(eps)
	if len(eps) < cap(eps)/2 {
		eps = slices.Clone(eps)
	}
	return eps
}

// port returns the number of the slice's port with name's port name and protocol.
func (s *cachedSlice) port(name ServicePortName) (int32, bool) {
	for _, p := range s.ports {
		if p.name == name.Port && p.protocol == name.Protocol {
			return p.port, true
		}
	}
	return 0, false
}

// CompareNames orders service port names by namespace, name, port name and protocol.
func CompareNames(a, b ServicePortName) int {
	return cmp.Or(
		strings.Compare(a.Namespace, b.Namespace),
		strings.Compare(a.Name, b.Name),
		strings.Compare(a.Port, b.Port),
		strings.Compare(string(a.Protocol), string(b.Protocol)),
	)
}

// toEndpoint expands a cached endpoint for one port.
func (e sliceEndpoint) toEndpoint(port int32) Endpoint {
	ep := Endpoint{
		IP:          e.addr,
		Port:        port,
		NodeName:    e.nodeName,
		Local:       e.flags&flagLocal != 0,
		Ready:       e.flags&flagReady != 0,
		Serving:     e.flags&flagServing != 0,
		Terminating: e.flags&flagTerminating != 0,
		Hints:       e.hints,
	}
	return ep
}

// dedupSorted sorts eps by String() and keeps one entry per String(): among entries with the
// same key (in their original order) the last non-terminating one, or the first if all are
// terminating. It reuses eps' storage.
func dedupSorted(eps []Endpoint) []Endpoint {
	slices.SortStableFunc(eps, compareByString)
	out := eps[:0]
	for start := 0; start < len(eps); {
		end := start + 1
		for end < len(eps) && compareByString(eps[start], eps[end]) == 0 {
			end++
		}
		chosen := eps[start]
		for _, ep := range eps[start+1 : end] {
			if !ep.Terminating {
				chosen = ep
			}
		}
		out = append(out, chosen)
		start = end
	}
	return out
}
