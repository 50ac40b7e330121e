package userspace

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

var (
	epA = netip.MustParseAddrPort("10.244.1.2:8080")
	epB = netip.MustParseAddrPort("10.244.1.3:8080")
	epC = netip.MustParseAddrPort("10.244.2.2:8080")

	client1 = netip.MustParseAddr("10.244.1.10")
	client2 = netip.MustParseAddr("10.244.1.11")
)

// threeEndpoints is a balancer state where every set holds A, B and C.
func threeEndpoints() endpointSets {
	all := []netip.AddrPort{epA, epB, epC}
	return endpointSets{all, all, all}
}

func TestBalancerRoundRobinTriesEveryEndpointOnceInRotation(t *testing.T) {
	b := newBalancer(clocktesting.NewFakeClock(time.Now()))
	b.update(threeEndpoints(), 0)
	want := [][]netip.AddrPort{
		{epA, epB, epC}, {epB, epC, epA}, {epC, epA, epB}, {epA, epB, epC},
	}
	for i, w := range want {
		got := b.candidates(setInternal, client1)
		if !slices.Equal(got, w) {
			t.Errorf("connection %d: candidates %v, want %v", i, got, w)
		}
		b.connected(client1, got[0])
	}
}

func TestBalancerRoundRobinIsPerSet(t *testing.T) {
	b := newBalancer(clocktesting.NewFakeClock(time.Now()))
	b.update(endpointSets{{epA, epB}, {epC}, {epA, epB}}, 0)
	if got := b.candidates(setExternal, client1); !slices.Equal(got, []netip.AddrPort{epC}) {
		t.Errorf("external candidates %v, want only the local endpoint C", got)
	}
	if got := b.candidates(setInternal, client1)[0]; got != epA {
		t.Errorf("first internal pick %v, want A (the external pick must not advance it)", got)
	}
}

func TestBalancerAffinityPinsClientUntilTimeout(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	b := newBalancer(clk)
	b.update(threeEndpoints(), 10*time.Second)

	first := b.candidates(setInternal, client1)
	b.connected(client1, first[0])
	for i := range 3 {
		clk.Step(9 * time.Second) // each use slides the window
		got := b.candidates(setInternal, client1)
		if got[0] != first[0] || len(got) != 3 {
			t.Fatalf("use %d after %v: candidates %v, want the pinned %v first and each endpoint once", i, 9*time.Second, got, first[0])
		}
		b.connected(client1, got[0])
	}
	if other := b.candidates(setInternal, client2)[0]; other == first[0] {
		t.Errorf("another client got the pinned endpoint %v: round robin should move on", other)
	}
	clk.Step(10 * time.Second)
	sawOther := false
	for range 3 {
		got := b.candidates(setInternal, client1)
		sawOther = sawOther || got[0] != first[0]
	}
	if !sawOther {
		t.Errorf("after the affinity timeout the client still always gets %v", first[0])
	}
}

func TestBalancerAffinityResetsWhenTimeoutChanges(t *testing.T) {
	b := newBalancer(clocktesting.NewFakeClock(time.Now()))
	b.update(threeEndpoints(), time.Hour)
	b.connected(client1, epC)
	if got := b.candidates(setInternal, client1)[0]; got != epC {
		t.Fatalf("pinned candidate %v, want C", got)
	}
	b.update(threeEndpoints(), 2*time.Hour)
	if len(b.pins) != 0 {
		t.Errorf("pins survived an affinity timeout change: %v", b.pins)
	}
}

func TestBalancerIgnoresPinToEndpointOutsideTheSet(t *testing.T) {
	b := newBalancer(clocktesting.NewFakeClock(time.Now()))
	b.update(threeEndpoints(), time.Hour)
	b.connected(client1, epC)
	b.update(endpointSets{{epA, epB}, {epA, epB}, {epA, epB}}, time.Hour)
	got := b.candidates(setInternal, client1)
	if slices.Contains(got, epC) || len(got) != 2 {
		t.Errorf("candidates %v, want A and B only", got)
	}
}

func TestBalancerFailedDialDropsPin(t *testing.T) {
	b := newBalancer(clocktesting.NewFakeClock(time.Now()))
	b.update(threeEndpoints(), time.Hour)
	b.connected(client1, epB)
	b.failed(client1, epB)
	if _, ok := b.pins[client1]; ok {
		t.Errorf("pin to B survived a failed dial to B")
	}
	b.connected(client1, epC)
	b.failed(client1, epA)
	if p := b.pins[client1]; p.endpoint != epC {
		t.Errorf("a failed dial to A dropped the pin to C")
	}
}

func TestBalancerBoundsAffinityTable(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	b := newBalancer(clk)
	b.update(threeEndpoints(), time.Hour)
	base := netip.MustParseAddr("10.0.0.0").As4()
	for i := range maxPinsPerPort + 10 {
		ip := base
		ip[1], ip[2], ip[3] = byte(i>>16), byte(i>>8), byte(i)
		b.connected(netip.AddrFrom4(ip), epA)
	}
	if len(b.pins) > maxPinsPerPort {
		t.Errorf("affinity table holds %d pins, want at most %d", len(b.pins), maxPinsPerPort)
	}
	clk.Step(2 * time.Hour)
	b.connected(client1, epA)
	if len(b.pins) != 1 {
		t.Errorf("after the timeout the table holds %d pins, want only the new one", len(b.pins))
	}
}

func TestBalancerNoEndpoints(t *testing.T) {
	b := newBalancer(clocktesting.NewFakeClock(time.Now()))
	if got := b.candidates(setInternal, client1); got != nil {
		t.Errorf("candidates without endpoints: %v, want nil", got)
	}
}

func TestSetsForTrafficPolicies(t *testing.T) {
	local := endpoints.Endpoint{IP: epA.Addr(), Port: 8080, NodeName: testNode, Local: true, Ready: true, Serving: true}
	remote := endpoints.Endpoint{IP: epC.Addr(), Port: 8080, NodeName: "node-b", Ready: true, Serving: true}
	both := []netip.AddrPort{epA, epC}
	for _, tc := range []struct {
		name         string
		sp           proxier.ServicePort
		want         endpointSets
		wantExternal bool
	}{
		{"cluster", proxier.ServicePort{NodePort: 30080}, endpointSets{both, both, both}, false},
		{"eTP Local", proxier.ServicePort{NodePort: 30080, ExternalPolicyLocal: true},
			endpointSets{both, {epA}, both}, true},
		{"iTP Local", proxier.ServicePort{NodePort: 30080, InternalPolicyLocal: true},
			endpointSets{{epA}, both, both}, true},
		// The node's own traffic to external addresses short-circuits to the cluster endpoints
		// (upstream UsesClusterEndpoints); with both policies Local the port has one shared
		// listener, so that set is computed but only the internal one serves.
		{"both Local", proxier.ServicePort{NodePort: 30080, InternalPolicyLocal: true, ExternalPolicyLocal: true},
			endpointSets{{epA}, {epA}, both}, false},
		{"iTP Local, ClusterIP only", proxier.ServicePort{InternalPolicyLocal: true},
			endpointSets{{epA}, nil, nil}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.sp.Protocol = v1.ProtocolTCP
			got := setsFor(&tc.sp, []endpoints.Endpoint{local, remote}, endpoints.Node{Name: testNode})
			for i := range got {
				if !slices.Equal(got[i], tc.want[i]) {
					t.Errorf("set %d: %v, want %v", i, got[i], tc.want[i])
				}
			}
			if needsExternalListener(&tc.sp) != tc.wantExternal {
				t.Errorf("needsExternalListener = %t, want %t", !tc.wantExternal, tc.wantExternal)
			}
		})
	}
}

func TestListenerClassChoosesSet(t *testing.T) {
	for _, tc := range []struct {
		class    listenerClass
		fromNode bool
		want     endpointSet
	}{
		{classInternal, false, setInternal},
		{classInternal, true, setInternal},
		{classExternal, false, setExternal},
		{classExternal, true, setExternalFromNode},
	} {
		if got := tc.class.set(tc.fromNode); got != tc.want {
			t.Errorf("class %d fromNode=%t: set %d, want %d", tc.class, tc.fromNode, got, tc.want)
		}
	}
}
