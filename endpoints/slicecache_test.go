package endpoints

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

const cacheNode = "node-a"

var svcFoo = types.NamespacedName{Namespace: "ns", Name: "foo"}

// makeSlice builds an EndpointSlice of service ns/svc.
func makeSlice(name, svc string, addrType discovery.AddressType, ports []discovery.EndpointPort,
	eps ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "ns",
			Labels: map[string]string{discovery.LabelServiceName: svc},
		},
		AddressType: addrType,
		Ports:       ports,
		Endpoints:   eps,
	}
}

// slicePortOf builds an EndpointSlice port.
func slicePortOf(name string, protocol v1.Protocol, number int32) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(protocol), Port: ptr.To(number)}
}

var httpPorts = []discovery.EndpointPort{slicePortOf("http", v1.ProtocolTCP, 80)}

// sliceEP builds an EndpointSlice endpoint with nil conditions on the given node.
func sliceEP(addr, node string, mods ...func(*discovery.Endpoint)) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{addr}}
	if node != "" {
		e.NodeName = ptr.To(node)
	}
	for _, mod := range mods {
		mod(&e)
	}
	return e
}

func terminatingEP(e *discovery.Endpoint) {
	e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
}

func httpName(svc types.NamespacedName) ServicePortName {
	return ServicePortName{NamespacedName: svc, Port: "http", Protocol: v1.ProtocolTCP}
}

// mustUpdate applies an update and fails unless its result is (svc, wantChanged).
func mustUpdate(t *testing.T, c *SliceCache, slice *discovery.EndpointSlice, removed bool,
	wantSvc types.NamespacedName, wantChanged bool) {
	t.Helper()
	svc, changed := c.Update(slice, removed)
	if svc != wantSvc || changed != wantChanged {
		t.Fatalf("Update(%s, removed=%t) = (%v, %t), want (%v, %t)", slice.Name, removed, svc, changed, wantSvc, wantChanged)
	}
}

// portStrings returns, per service port, the String() of its endpoints.
func portStrings(m map[ServicePortName][]Endpoint) map[ServicePortName][]string {
	out := make(map[ServicePortName][]string, len(m))
	for name, eps := range m {
		out[name] = endpointStrings(eps)
	}
	return out
}

func TestSliceCacheMergesSlicesAndConvertsFields(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts,
		sliceEP("10.0.0.9", cacheNode, func(e *discovery.Endpoint) {
			e.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "zone-a"}},
				ForNodes: []discovery.ForNode{{Name: "node-a"}, {Name: "node-b"}}}
		}),
		sliceEP("10.0.0.10", "node-b", terminatingEP)), false, svcFoo, true)
	mustUpdate(t, c, makeSlice("foo-2", "foo", discovery.AddressTypeIPv4, httpPorts,
		sliceEP("10.0.0.2", "", func(e *discovery.Endpoint) {
			e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false)}
		})), false, svcFoo, true)

	got := c.EndpointsFor(svcFoo)
	want := map[ServicePortName][]Endpoint{httpName(svcFoo): {
		{IP: netip.MustParseAddr("10.0.0.10"), Port: 80, NodeName: "node-b", Serving: true, Terminating: true},
		{IP: netip.MustParseAddr("10.0.0.2"), Port: 80},
		{IP: netip.MustParseAddr("10.0.0.9"), Port: 80, NodeName: cacheNode, Local: true, Ready: true, Serving: true,
			Hints: &Hints{Zones: []string{"zone-a"}, Nodes: []string{"node-a", "node-b"}}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("EndpointsFor:\n got %+v\nwant %+v", got, want)
	}
	if other := c.EndpointsFor(types.NamespacedName{Namespace: "ns", Name: "bar"}); len(other) != 0 {
		t.Errorf("unknown service: got %v", other)
	}
}

func TestSliceCacheDuplicatesPreferNonTerminating(t *testing.T) {
	ready := makeSlice("foo-ready", "foo", discovery.AddressTypeIPv4, httpPorts, sliceEP("10.0.0.1", "node-b"))
	terminating := makeSlice("foo-term", "foo", discovery.AddressTypeIPv4, httpPorts,
		sliceEP("10.0.0.1", "node-c", terminatingEP), sliceEP("10.0.0.2", "node-c", terminatingEP))
	want := map[ServicePortName][]Endpoint{httpName(svcFoo): {
		{IP: netip.MustParseAddr("10.0.0.1"), Port: 80, NodeName: "node-b", Ready: true, Serving: true},
		{IP: netip.MustParseAddr("10.0.0.2"), Port: 80, NodeName: "node-c", Serving: true, Terminating: true},
	}}
	for _, order := range [][]*discovery.EndpointSlice{{ready, terminating}, {terminating, ready}} {
		c := NewSliceCache(v1.IPv4Protocol, cacheNode)
		for _, s := range order {
			mustUpdate(t, c, s, false, svcFoo, true)
		}
		if got := c.EndpointsFor(svcFoo); !reflect.DeepEqual(got, want) {
			t.Errorf("order %s,%s:\n got %+v\nwant %+v", order[0].Name, order[1].Name, got, want)
		}
	}

	// The same rule applies to duplicates inside one slice.
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts,
		sliceEP("10.0.0.2", "node-c", terminatingEP), sliceEP("10.0.0.1", "node-c", terminatingEP),
		sliceEP("10.0.0.1", "node-b")), false, svcFoo, true)
	if got := c.EndpointsFor(svcFoo); !reflect.DeepEqual(got, want) {
		t.Errorf("one slice:\n got %+v\nwant %+v", got, want)
	}
}

func TestSliceCacheEndpointMovesBetweenSlices(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	a, b, d := sliceEP("10.0.0.1", "node-b"), sliceEP("10.0.0.2", cacheNode), sliceEP("10.0.0.3", "node-c")
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts, a, b), false, svcFoo, true)
	mustUpdate(t, c, makeSlice("foo-2", "foo", discovery.AddressTypeIPv4, httpPorts, d), false, svcFoo, true)
	before := c.EndpointsFor(svcFoo)

	// b is added to foo-2 before it leaves foo-1: both steps leave the merged result unchanged.
	mustUpdate(t, c, makeSlice("foo-2", "foo", discovery.AddressTypeIPv4, httpPorts, b, d), false, svcFoo, true)
	if got := c.EndpointsFor(svcFoo); !reflect.DeepEqual(got, before) {
		t.Errorf("while in both slices:\n got %+v\nwant %+v", got, before)
	}
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts, a), false, svcFoo, true)
	if got := c.EndpointsFor(svcFoo); !reflect.DeepEqual(got, before) {
		t.Errorf("after the move:\n got %+v\nwant %+v", got, before)
	}
	if n := len(before[httpName(svcFoo)]); n != 3 {
		t.Errorf("got %d endpoints, want 3", n)
	}
}

func TestSliceCacheNoOpUpdates(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	slice := makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts,
		sliceEP("10.0.0.1", "node-b"), sliceEP("10.0.0.2", cacheNode))
	mustUpdate(t, c, slice, false, svcFoo, true)
	mustUpdate(t, c, slice.DeepCopy(), false, svcFoo, false)

	meta := slice.DeepCopy()
	meta.ResourceVersion = "42"
	meta.Generation = 7
	meta.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "2025-01-01T00:00:00Z"}
	meta.Labels["endpointslice.kubernetes.io/managed-by"] = "someone"
	meta.Endpoints[0].TargetRef = &v1.ObjectReference{Kind: "Pod", Name: "pod-1"}
	meta.Endpoints[0].Hostname = ptr.To("pod-1")
	meta.Endpoints[1].Conditions.Ready = ptr.To(true) // nil already meant ready
	mustUpdate(t, c, meta, false, svcFoo, false)

	changed := slice.DeepCopy()
	changed.Endpoints[0].Conditions.Ready = ptr.To(false)
	mustUpdate(t, c, changed, false, svcFoo, true)
	if got := c.EndpointsFor(svcFoo)[httpName(svcFoo)][0]; got.Ready {
		t.Errorf("condition change not applied: %+v", got)
	}
	hinted := changed.DeepCopy()
	hinted.Endpoints[1].Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "zone-a"}}}
	mustUpdate(t, c, hinted, false, svcFoo, true)
	ported := hinted.DeepCopy()
	ported.Ports[0].Port = ptr.To[int32](8080)
	mustUpdate(t, c, ported, false, svcFoo, true)
}

func TestSliceCacheIgnoresOtherFamiliesAndFQDN(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	mustUpdate(t, c, makeSlice("foo-v6", "foo", discovery.AddressTypeIPv6, httpPorts, sliceEP("2001:db8::1", "")),
		false, types.NamespacedName{}, false)
	mustUpdate(t, c, makeSlice("foo-fqdn", "foo", discovery.AddressTypeFQDN, httpPorts, sliceEP("example.com", "")),
		false, types.NamespacedName{}, false)
	if got := c.EndpointsFor(svcFoo); len(got) != 0 {
		t.Errorf("got %v", got)
	}
}

func TestSliceCacheIPv6(t *testing.T) {
	c := NewSliceCache(v1.IPv6Protocol, cacheNode)
	mustUpdate(t, c, makeSlice("foo-v4", "foo", discovery.AddressTypeIPv4, httpPorts, sliceEP("10.0.0.1", "")),
		false, types.NamespacedName{}, false)
	mustUpdate(t, c, makeSlice("foo-v6", "foo", discovery.AddressTypeIPv6, httpPorts,
		sliceEP("2001:0db8:0000:0000:0000:0000:0000:0009", cacheNode), sliceEP("2001:db8::10", "node-b"),
		sliceEP("::ffff:10.0.0.1", "node-b")), false, svcFoo, true)
	got := portStrings(c.EndpointsFor(svcFoo))
	want := map[ServicePortName][]string{httpName(svcFoo): {"[2001:db8::10]:80", "[2001:db8::9]:80"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if eps := c.EndpointsFor(svcFoo)[httpName(svcFoo)]; !eps[1].Local || eps[0].Local {
		t.Errorf("Local wrong: %+v", eps)
	}
}

func TestSliceCacheIgnoresSliceWithoutServiceLabel(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	slice := makeSlice("orphan", "foo", discovery.AddressTypeIPv4, httpPorts, sliceEP("10.0.0.1", ""))
	delete(slice.Labels, discovery.LabelServiceName)
	mustUpdate(t, c, slice, false, types.NamespacedName{}, false)
	mustUpdate(t, c, slice, true, types.NamespacedName{}, false)
	if got := c.EndpointsFor(svcFoo); len(got) != 0 {
		t.Errorf("got %v", got)
	}
}

func TestSliceCacheRemove(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	one := makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts, sliceEP("10.0.0.1", ""))
	two := makeSlice("foo-2", "foo", discovery.AddressTypeIPv4, httpPorts, sliceEP("10.0.0.2", ""))
	mustUpdate(t, c, one, true, svcFoo, false) // unknown slice, unknown service
	mustUpdate(t, c, one, false, svcFoo, true)
	mustUpdate(t, c, two, true, svcFoo, false) // unknown slice of a known service
	mustUpdate(t, c, two, false, svcFoo, true)

	mustUpdate(t, c, one, true, svcFoo, true)
	want := map[ServicePortName][]string{httpName(svcFoo): {"10.0.0.2:80"}}
	if got := portStrings(c.EndpointsFor(svcFoo)); !reflect.DeepEqual(got, want) {
		t.Errorf("after removing foo-1: got %v, want %v", got, want)
	}
	mustUpdate(t, c, one, true, svcFoo, false)
	mustUpdate(t, c, two, true, svcFoo, true)
	if got := c.EndpointsFor(svcFoo); got != nil {
		t.Errorf("after removing every slice: got %v", got)
	}
	if n := len(c.services); n != 0 {
		t.Errorf("%d services still stored", n)
	}
}

func TestSliceCachePortsByNameAndProtocol(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	ports := []discovery.EndpointPort{
		slicePortOf("dns", v1.ProtocolUDP, 53),
		slicePortOf("dns", v1.ProtocolTCP, 5353),
		{Name: ptr.To(""), Port: ptr.To[int32](80)}, // nil protocol means TCP
		{Name: ptr.To("nil-port"), Protocol: ptr.To(v1.ProtocolTCP)},
		slicePortOf("zero-port", v1.ProtocolTCP, 0),
		{Protocol: ptr.To(v1.ProtocolSCTP), Port: ptr.To[int32](99)}, // nil name
	}
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, ports, sliceEP("10.0.0.1", "")),
		false, svcFoo, true)
	got := portStrings(c.EndpointsFor(svcFoo))
	want := map[ServicePortName][]string{
		{NamespacedName: svcFoo, Port: "dns", Protocol: v1.ProtocolUDP}: {"10.0.0.1:53"},
		{NamespacedName: svcFoo, Port: "dns", Protocol: v1.ProtocolTCP}: {"10.0.0.1:5353"},
		{NamespacedName: svcFoo, Port: "", Protocol: v1.ProtocolTCP}:    {"10.0.0.1:80"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestSliceCacheSlicesWithoutUsablePortsYieldNothing(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, nil, sliceEP("10.0.0.1", "")),
		false, svcFoo, true)
	if got := c.EndpointsFor(svcFoo); len(got) != 0 {
		t.Errorf("got %v", got)
	}
	// A port without endpoints does not produce an empty entry.
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts), false, svcFoo, true)
	mustUpdate(t, c, makeSlice("foo-2", "foo", discovery.AddressTypeIPv4, httpPorts), false, svcFoo, true)
	if got := c.EndpointsFor(svcFoo); len(got) != 0 {
		t.Errorf("got %v", got)
	}
}

func TestSliceCacheSkipsBadAddresses(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts,
		sliceEP("not-an-ip", ""), discovery.Endpoint{}, sliceEP("2001:db8::1", ""),
		sliceEP("010.000.000.001", ""), // leading zeros are accepted, as upstream's ParseIPSloppy does
		discovery.Endpoint{Addresses: []string{"10.0.0.2", "10.0.0.3"}}), false, svcFoo, true)
	want := map[ServicePortName][]string{httpName(svcFoo): {"10.0.0.1:80", "10.0.0.2:80"}}
	if got := portStrings(c.EndpointsFor(svcFoo)); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestSliceCacheLocal(t *testing.T) {
	slice := makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts,
		sliceEP("10.0.0.1", cacheNode), sliceEP("10.0.0.2", "node-b"), sliceEP("10.0.0.3", ""))
	for _, tc := range []struct {
		node string
		want []bool
	}{
		{node: cacheNode, want: []bool{true, false, false}},
		{node: "node-b", want: []bool{false, true, false}},
		{node: "", want: []bool{false, false, false}},
	} {
		c := NewSliceCache(v1.IPv4Protocol, tc.node)
		mustUpdate(t, c, slice, false, svcFoo, true)
		var got []bool
		for _, e := range c.EndpointsFor(svcFoo)[httpName(svcFoo)] {
			got = append(got, e.Local)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("node %q: Local = %v, want %v", tc.node, got, tc.want)
		}
	}
}

func TestSliceCacheResultsAreIndependentCopies(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, httpPorts,
		sliceEP("10.0.0.1", ""), sliceEP("10.0.0.2", "")), false, svcFoo, true)
	first := c.EndpointsFor(svcFoo)
	first[httpName(svcFoo)][0].Port = 1
	first[httpName(svcFoo)] = nil
	want := map[ServicePortName][]string{httpName(svcFoo): {"10.0.0.1:80", "10.0.0.2:80"}}
	if got := portStrings(c.EndpointsFor(svcFoo)); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestSliceCacheConcurrentUse runs updates and reads in parallel (meaningful under -race) and
// then checks the final state.
func TestSliceCacheConcurrentUse(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	const services, rounds = 8, 200
	var wg sync.WaitGroup
	for s := range services {
		svc := fmt.Sprintf("svc-%d", s)
		wg.Go(func() {
			for r := range rounds {
				eps := []discovery.Endpoint{sliceEP(fmt.Sprintf("10.%d.%d.1", s, r%250), cacheNode)}
				c.Update(makeSlice(svc+"-a", svc, discovery.AddressTypeIPv4, httpPorts, eps...), false)
				c.Update(makeSlice(svc+"-b", svc, discovery.AddressTypeIPv4, httpPorts, eps...), r%2 == 0)
			}
		})
		wg.Go(func() {
			for range rounds {
				name := types.NamespacedName{Namespace: "ns", Name: svc}
				for _, e := range c.EndpointsFor(name)[httpName(name)] {
					if !e.Local || !e.Ready {
						t.Errorf("unexpected endpoint %+v", e)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	for s := range services {
		name := types.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("svc-%d", s)}
		got := portStrings(c.EndpointsFor(name))
		want := map[ServicePortName][]string{httpName(name): {fmt.Sprintf("10.%d.%d.1:80", s, (rounds-1)%250)}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%v: got %v, want %v", name, got, want)
		}
	}
}

func TestPortEndpointsForIsSortedByPortAndSizedExactly(t *testing.T) {
	c := NewSliceCache(v1.IPv4Protocol, cacheNode)
	ports := []discovery.EndpointPort{slicePortOf("metrics", v1.ProtocolTCP, 9090), slicePortOf("dns", v1.ProtocolUDP, 53),
		slicePortOf("dns", v1.ProtocolTCP, 53)}
	mustUpdate(t, c, makeSlice("foo-1", "foo", discovery.AddressTypeIPv4, ports,
		sliceEP("10.0.0.9", cacheNode), sliceEP("10.0.0.9", cacheNode), sliceEP("10.0.0.1", "node-b")), false, svcFoo, true)
	mustUpdate(t, c, makeSlice("foo-2", "foo", discovery.AddressTypeIPv4, ports[:1], sliceEP("10.0.0.5", "node-b")), false, svcFoo, true)

	var got []string
	for _, l := range c.PortEndpointsFor(svcFoo) {
		got = append(got, fmt.Sprintf("%s/%s=%d", l.Name.Port, l.Name.Protocol, len(l.Endpoints)))
		if cap(l.Endpoints) > 2*len(l.Endpoints) {
			t.Errorf("%s: %d endpoints in storage for %d", l.Name, cap(l.Endpoints), len(l.Endpoints))
		}
	}
	want := []string{"dns/TCP=2", "dns/UDP=2", "metrics/TCP=3"}
	if !slices.Equal(got, want) {
		t.Errorf("PortEndpointsFor = %v, want %v", got, want)
	}
}
