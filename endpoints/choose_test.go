package endpoints

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// testNode is the node every Choose test runs on.
var testNode = Node{Name: "node-a", Zone: "zone-a"}

// Policies used by the Choose tests.
var (
	policyCluster         = Policy{}
	policyExternalLocal   = Policy{ExternallyAccessible: true, ExternalLocal: true}
	policyInternalLocal   = Policy{InternalLocal: true}
	policyInternalLocalEx = Policy{InternalLocal: true, ExternallyAccessible: true}
	policyBothLocal       = Policy{InternalLocal: true, ExternallyAccessible: true, ExternalLocal: true}
	policyLocalNotExposed = Policy{ExternalLocal: true}
)

// ep builds a ready, serving, remote endpoint on port 80 and applies mods to it.
func ep(addr string, mods ...func(*Endpoint)) Endpoint {
	e := Endpoint{IP: netip.MustParseAddr(addr), Port: 80, NodeName: "node-b", Ready: true, Serving: true}
	for _, mod := range mods {
		mod(&e)
	}
	return e
}

func local(e *Endpoint) { e.Local = true; e.NodeName = testNode.Name }

func notReady(e *Endpoint) { e.Ready = false; e.Serving = false }

func servingTerminating(e *Endpoint) { e.Ready = false; e.Serving = true; e.Terminating = true }

func notServingTerminating(e *Endpoint) { e.Ready = false; e.Serving = false; e.Terminating = true }

func zones(names ...string) func(*Endpoint) {
	return func(e *Endpoint) { e.Hints = withHints(e.Hints, names, nil) }
}

func nodes(names ...string) func(*Endpoint) {
	return func(e *Endpoint) { e.Hints = withHints(e.Hints, nil, names) }
}

// withHints returns a copy of h with zones or nodes (when non-nil) replaced.
func withHints(h *Hints, zones, nodes []string) *Hints {
	out := Hints{}
	if h != nil {
		out = *h
	}
	if zones != nil {
		out.Zones = zones
	}
	if nodes != nil {
		out.Nodes = nodes
	}
	return &out
}

func port(p int32) func(*Endpoint) { return func(e *Endpoint) { e.Port = p } }

// endpointStrings returns the String() of each endpoint; nil for a nil list.
func endpointStrings(eps []Endpoint) []string {
	if eps == nil {
		return nil
	}
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		out = append(out, e.String())
	}
	return out
}

type chooseCase struct {
	name   string
	policy Policy
	node   Node // testNode when zero
	eps    []Endpoint
	// cluster and local: nil means the list must be nil, []string{} that it must be empty but
	// non-nil.
	cluster []string
	local   []string
	all     []string
	hasAny  bool
}

func chooseCases() []chooseCase {
	return slices.Concat(basicChooseCases(), policyChooseCases(), topologyChooseCases())
}

func basicChooseCases() []chooseCase {
	return []chooseCase{{
		name: "no endpoints", policy: policyCluster,
		cluster: []string{}, all: []string{},
	}, {
		name: "ready only", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1"), ep("10.0.0.2")},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"}, all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "not-ready excluded", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1"), ep("10.0.0.2", notReady), ep("10.0.0.3")},
		cluster: []string{"10.0.0.1:80", "10.0.0.3:80"}, all: []string{"10.0.0.1:80", "10.0.0.3:80"}, hasAny: true,
	}, {
		name: "only not-ready endpoints", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", notReady), ep("10.0.0.2", notReady)},
		cluster: []string{}, all: []string{},
	}, {
		name: "terminating fallback when nothing is ready", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", servingTerminating), ep("10.0.0.2", notReady), ep("10.0.0.3", servingTerminating)},
		cluster: []string{"10.0.0.1:80", "10.0.0.3:80"}, all: []string{"10.0.0.1:80", "10.0.0.3:80"}, hasAny: true,
	}, {
		name: "terminating not used while something is ready", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", servingTerminating), ep("10.0.0.2")},
		cluster: []string{"10.0.0.2:80"}, all: []string{"10.0.0.2:80"}, hasAny: true,
	}, {
		name: "not-serving terminating never used", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", notServingTerminating), ep("10.0.0.2", notReady)},
		cluster: []string{}, all: []string{},
	}, {
		name: "terminating fallback skips not-serving terminating", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", notServingTerminating), ep("10.0.0.2", servingTerminating)},
		cluster: []string{"10.0.0.2:80"}, all: []string{"10.0.0.2:80"}, hasAny: true,
	}, {
		name: "sorted by string, not numerically", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.9"), ep("10.0.0.10"), ep("10.0.0.9", port(8080)), ep("10.0.0.9", port(443))},
		cluster: []string{"10.0.0.10:80", "10.0.0.9:443", "10.0.0.9:80", "10.0.0.9:8080"},
		all:     []string{"10.0.0.10:80", "10.0.0.9:443", "10.0.0.9:80", "10.0.0.9:8080"}, hasAny: true,
	}, {
		name: "IPv6 endpoints", policy: policyCluster,
		eps:     []Endpoint{ep("2001:db8::9"), ep("2001:db8::10"), ep("2001:db8::a", notReady)},
		cluster: []string{"[2001:db8::10]:80", "[2001:db8::9]:80"},
		all:     []string{"[2001:db8::10]:80", "[2001:db8::9]:80"}, hasAny: true,
	}}
}

func policyChooseCases() []chooseCase {
	return []chooseCase{{
		name: "eTP Local: cluster for internal, local for external", policy: policyExternalLocal,
		eps:     []Endpoint{ep("10.0.0.1", local), ep("10.0.0.2"), ep("10.0.0.3", local, notReady)},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"}, local: []string{"10.0.0.1:80"},
		all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "eTP Local: no local endpoints", policy: policyExternalLocal,
		eps:     []Endpoint{ep("10.0.0.1"), ep("10.0.0.2")},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"}, local: []string{},
		all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "eTP Local: local falls back to terminating while cluster uses remote ready", policy: policyExternalLocal,
		eps:     []Endpoint{ep("10.0.0.1", local, servingTerminating), ep("10.0.0.2"), ep("10.0.0.3", servingTerminating)},
		cluster: []string{"10.0.0.2:80"}, local: []string{"10.0.0.1:80"},
		all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "eTP Local: nothing ready, both fall back to terminating", policy: policyExternalLocal,
		eps: []Endpoint{ep("10.0.0.1", local, servingTerminating), ep("10.0.0.2", servingTerminating),
			ep("10.0.0.3", local, notReady)},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"}, local: []string{"10.0.0.1:80"},
		all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "eTP Local: local ready preferred over local terminating", policy: policyExternalLocal,
		eps:     []Endpoint{ep("10.0.0.1", local, servingTerminating), ep("10.0.0.2", local)},
		cluster: []string{"10.0.0.2:80"}, local: []string{"10.0.0.2:80"},
		all: []string{"10.0.0.2:80"}, hasAny: true,
	}, {
		name: "eTP Local flag ignored when not externally accessible", policy: policyLocalNotExposed,
		eps:     []Endpoint{ep("10.0.0.1", local), ep("10.0.0.2")},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"},
		all:     []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "iTP Local: only local ready", policy: policyInternalLocal,
		eps:   []Endpoint{ep("10.0.0.1", local), ep("10.0.0.2"), ep("10.0.0.3", local)},
		local: []string{"10.0.0.1:80", "10.0.0.3:80"}, all: []string{"10.0.0.1:80", "10.0.0.3:80"}, hasAny: true,
	}, {
		name: "iTP Local: all endpoints remote", policy: policyInternalLocal,
		eps:   []Endpoint{ep("10.0.0.1"), ep("10.0.0.2")},
		local: []string{}, all: []string{}, hasAny: true,
	}, {
		name: "iTP Local: no endpoints", policy: policyInternalLocal,
		local: []string{}, all: []string{},
	}, {
		name: "iTP Local: local terminating used while remote is ready", policy: policyInternalLocal,
		eps:   []Endpoint{ep("10.0.0.1", local, servingTerminating), ep("10.0.0.2")},
		local: []string{"10.0.0.1:80"}, all: []string{"10.0.0.1:80"}, hasAny: true,
	}, {
		name: "iTP Local: local not-serving terminating never used", policy: policyInternalLocal,
		eps:   []Endpoint{ep("10.0.0.1", local, notServingTerminating), ep("10.0.0.2", local, notReady)},
		local: []string{}, all: []string{},
	}, {
		name: "iTP Local, eTP Cluster, externally accessible: both lists", policy: policyInternalLocalEx,
		eps:     []Endpoint{ep("10.0.0.1", local), ep("10.0.0.2")},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"}, local: []string{"10.0.0.1:80"},
		all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "iTP Local and eTP Local: local only", policy: policyBothLocal,
		// Upstream topology_test.go: cluster endpoints are still needed to short-circuit
		// traffic from pods and the node to the external destinations.
		eps:     []Endpoint{ep("10.0.0.1", local), ep("10.0.0.2")},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"},
		local:   []string{"10.0.0.1:80"}, all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "iTP Local and eTP Local: all remote and terminating", policy: policyBothLocal,
		eps:     []Endpoint{ep("10.0.0.1", servingTerminating), ep("10.0.0.2", servingTerminating)},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"},
		local:   []string{}, all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "HasAny false with only not-serving endpoints under Local policy", policy: policyBothLocal,
		eps:     []Endpoint{ep("10.0.0.1", notServingTerminating), ep("10.0.0.2", local, notReady)},
		cluster: []string{},
		local:   []string{}, all: []string{},
	}, {
		name: "IPv6 union under eTP Local", policy: policyExternalLocal,
		eps: []Endpoint{ep("2001:db8::1", local, servingTerminating), ep("2001:db8::2"),
			ep("2001:db8::1:0")},
		cluster: []string{"[2001:db8::1:0]:80", "[2001:db8::2]:80"}, local: []string{"[2001:db8::1]:80"},
		all: []string{"[2001:db8::1:0]:80", "[2001:db8::1]:80", "[2001:db8::2]:80"}, hasAny: true,
	}}
}

func topologyChooseCases() []chooseCase {
	return []chooseCase{{
		name: "zone hints for this zone filter cluster endpoints", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", zones("zone-a")), ep("10.0.0.2", zones("zone-b")), ep("10.0.0.3", zones("zone-a"))},
		cluster: []string{"10.0.0.1:80", "10.0.0.3:80"}, all: []string{"10.0.0.1:80", "10.0.0.3:80"}, hasAny: true,
	}, {
		name: "zone hints with several zones per endpoint", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", zones("zone-b", "zone-a")), ep("10.0.0.2", zones("zone-b")), ep("10.0.0.3", zones("zone-c"))},
		cluster: []string{"10.0.0.1:80"}, all: []string{"10.0.0.1:80"}, hasAny: true,
	}, {
		name: "no zone hint for this zone: no filtering", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", zones("zone-b")), ep("10.0.0.2", zones("zone-c"))},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"}, all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "a ready endpoint without zone hints: no filtering", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", zones("zone-a")), ep("10.0.0.2", zones("zone-b")), ep("10.0.0.3")},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"},
		all:     []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}, hasAny: true,
	}, {
		name: "an unready endpoint without hints does not disable zone hints", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", zones("zone-a")), ep("10.0.0.2", zones("zone-b")), ep("10.0.0.3", notReady)},
		cluster: []string{"10.0.0.1:80"}, all: []string{"10.0.0.1:80"}, hasAny: true,
	}, {
		name: "only unready endpoints hinted for this zone: no filtering", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", zones("zone-a"), notReady), ep("10.0.0.2", zones("zone-b")), ep("10.0.0.3", zones("zone-c"))},
		cluster: []string{"10.0.0.2:80", "10.0.0.3:80"}, all: []string{"10.0.0.2:80", "10.0.0.3:80"}, hasAny: true,
	}, {
		name: "node without zone label: no filtering", policy: policyCluster, node: Node{Name: "node-a"},
		eps:     []Endpoint{ep("10.0.0.1", zones("zone-a")), ep("10.0.0.2", zones("zone-b"))},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"}, all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "terminating fallback ignores hints", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", zones("zone-b"), servingTerminating), ep("10.0.0.2", zones("zone-a"), servingTerminating)},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"}, all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "zone hints ignored for iTP Local", policy: policyInternalLocal,
		eps:   []Endpoint{ep("10.0.0.1", local, zones("zone-b")), ep("10.0.0.2", zones("zone-a"))},
		local: []string{"10.0.0.1:80"}, all: []string{"10.0.0.1:80"}, hasAny: true,
	}, {
		name: "eTP Local with zone hints: union of zone-filtered cluster and local", policy: policyExternalLocal,
		eps: []Endpoint{ep("10.0.0.1", local, zones("zone-b")), ep("10.0.0.2", zones("zone-a")),
			ep("10.0.0.3", zones("zone-b"))},
		cluster: []string{"10.0.0.2:80"}, local: []string{"10.0.0.1:80"},
		all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "node hints for this node filter cluster endpoints", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", nodes("node-a")), ep("10.0.0.2", nodes("node-b"))},
		cluster: []string{"10.0.0.1:80"}, all: []string{"10.0.0.1:80"}, hasAny: true,
	}, {
		name: "node hints take precedence over zone hints", policy: policyCluster,
		eps: []Endpoint{ep("10.0.0.1", nodes("node-a"), zones("zone-b")), ep("10.0.0.2", nodes("node-b"), zones("zone-a")),
			ep("10.0.0.3", nodes("node-c"), zones("zone-a"))},
		cluster: []string{"10.0.0.1:80"}, all: []string{"10.0.0.1:80"}, hasAny: true,
	}, {
		name: "no node hint for this node: falls back to zone hints", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", nodes("node-b"), zones("zone-a")), ep("10.0.0.2", nodes("node-c"), zones("zone-b"))},
		cluster: []string{"10.0.0.1:80"}, all: []string{"10.0.0.1:80"}, hasAny: true,
	}, {
		name: "a ready endpoint without node hints: falls back to zone hints", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", nodes("node-a"), zones("zone-b")), ep("10.0.0.2", zones("zone-a"))},
		cluster: []string{"10.0.0.2:80"}, all: []string{"10.0.0.2:80"}, hasAny: true,
	}, {
		name: "node hints and no usable zone hints: no filtering", policy: policyCluster,
		eps:     []Endpoint{ep("10.0.0.1", nodes("node-b")), ep("10.0.0.2", nodes("node-c"))},
		cluster: []string{"10.0.0.1:80", "10.0.0.2:80"}, all: []string{"10.0.0.1:80", "10.0.0.2:80"}, hasAny: true,
	}, {
		name: "node hints ignored for iTP Local", policy: policyInternalLocal,
		eps:   []Endpoint{ep("10.0.0.1", local, nodes("node-b")), ep("10.0.0.2", nodes("node-a"))},
		local: []string{"10.0.0.1:80"}, all: []string{"10.0.0.1:80"}, hasAny: true,
	}, {
		name: "IPv6 zone hints", policy: policyCluster,
		eps:     []Endpoint{ep("2001:db8::1", zones("zone-a")), ep("2001:db8::2", zones("zone-b"))},
		cluster: []string{"[2001:db8::1]:80"}, all: []string{"[2001:db8::1]:80"}, hasAny: true,
	}}
}

// checkList fails unless got's strings are want, with nil-ness matching too.
func checkList(t *testing.T, what string, got []Endpoint, want []string) {
	t.Helper()
	if (got == nil) != (want == nil) {
		t.Errorf("%s: got %v (nil=%t), want %v (nil=%t)", what, endpointStrings(got), got == nil, want, want == nil)
		return
	}
	if gotStrings := endpointStrings(got); !slices.Equal(gotStrings, want) {
		t.Errorf("%s: got %v, want %v", what, gotStrings, want)
	}
}

func TestChoose(t *testing.T) {
	cases := chooseCases()
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			node := tc.node
			if node == (Node{}) {
				node = testNode
			}
			got := Choose(tc.eps, tc.policy, node)
			checkList(t, "Cluster", got.Cluster, tc.cluster)
			checkList(t, "Local", got.Local, tc.local)
			if gotAll := endpointStrings(got.AllReachable); !slices.Equal(gotAll, tc.all) {
				t.Errorf("AllReachable: got %v, want %v", gotAll, tc.all)
			}
			if got.HasAny != tc.hasAny {
				t.Errorf("HasAny: got %t, want %t", got.HasAny, tc.hasAny)
			}
		})
	}
}

// TestChooseUnsortedInputUnchanged checks that an unsorted input is neither reordered nor
// modified, that outputs are sorted anyway, and that they carry the input endpoints unaltered.
func TestChooseUnsortedInputUnchanged(t *testing.T) {
	input := []Endpoint{
		ep("10.0.0.9", local, zones("zone-a")),
		ep("10.0.0.3", zones("zone-a")),
		ep("10.0.0.10", local, zones("zone-b")),
		ep("10.0.0.1", zones("zone-b")),
	}
	before := slices.Clone(input)
	got := Choose(input, policyExternalLocal, testNode)
	if !reflect.DeepEqual(input, before) {
		t.Fatalf("input modified: %v", endpointStrings(input))
	}
	checkList(t, "Cluster", got.Cluster, []string{"10.0.0.3:80", "10.0.0.9:80"})
	checkList(t, "Local", got.Local, []string{"10.0.0.10:80", "10.0.0.9:80"})
	checkList(t, "AllReachable", got.AllReachable, []string{"10.0.0.10:80", "10.0.0.3:80", "10.0.0.9:80"})
	want := []Endpoint{input[2], input[1], input[0]}
	if !reflect.DeepEqual(got.AllReachable, want) {
		t.Errorf("AllReachable endpoints altered:\n got %+v\nwant %+v", got.AllReachable, want)
	}
}

// TestCompareByStringMatchesString checks the allocation-free comparison against String().
func TestCompareByStringMatchesString(t *testing.T) {
	eps := []Endpoint{
		ep("10.0.0.1"), ep("10.0.0.10"), ep("10.0.0.2", port(8080)), ep("10.0.0.2", port(443)),
		ep("1.2.3.4", port(1)), ep("255.255.255.255", port(65535)),
		ep("2001:db8::1"), ep("2001:db8::10"), ep("::1"), ep("fe80::1:2:3:4", port(9)),
	}
	for _, a := range eps {
		for _, b := range eps {
			want := 0
			switch {
			case a.String() < b.String():
				want = -1
			case a.String() > b.String():
				want = 1
			}
			if got := compareByString(a, b); got != want {
				t.Errorf("compareByString(%s, %s) = %d, want %d", a, b, got, want)
			}
		}
	}
}
