package sources

import (
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
)

func testService(name, clusterIP string, lbls map[string]string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: lbls},
		Spec: v1.ServiceSpec{
			ClusterIP: clusterIP,
			Ports:     []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
}

func testSlice(name string, lbls map[string]string) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: lbls},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.1.0.1"}}},
	}
}

func testNode(name string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"zone": "a"}}}
}

func TestSelectorStrings(t *testing.T) {
	cases := map[string]struct{ got, want string }{
		"service labels":       {serviceLabelSelector(), "!service.kubernetes.io/service-proxy-name"},
		"service fields":       {serviceFieldSelector(), "spec.clusterIP!=None"},
		"endpointslice labels": {endpointSliceLabelSelector(), "!service.kubernetes.io/headless"},
		"node fields":          {nodeFieldSelector("node-a"), "metadata.name=node-a"},
	}
	for name, c := range cases {
		if c.got != c.want {
			t.Errorf("%s selector = %q, want %q", name, c.got, c.want)
		}
	}
}

// TestServicePredicateMatchesSelectors checks that the client-side predicate and the server-side
// selectors agree, so the file source filters exactly like the API server does.
func TestServicePredicateMatchesSelectors(t *testing.T) {
	labelSel, err := labels.Parse(serviceLabelSelector())
	if err != nil {
		t.Fatalf("parsing service label selector: %v", err)
	}
	fieldSel, err := fields.ParseSelector(serviceFieldSelector())
	if err != nil {
		t.Fatalf("parsing service field selector: %v", err)
	}
	cases := []struct {
		svc  *v1.Service
		want bool
	}{
		{testService("plain", "10.0.0.1", nil), true},
		{testService("other-labels", "10.0.0.1", map[string]string{"app": "x"}), true},
		{testService("no-ip-yet", "", nil), true},
		{testService("headless", v1.ClusterIPNone, nil), false},
		{testService("claimed", "10.0.0.1", map[string]string{"service.kubernetes.io/service-proxy-name": "other"}), false},
		{testService("claimed-empty", "10.0.0.1", map[string]string{"service.kubernetes.io/service-proxy-name": ""}), false},
	}
	for _, c := range cases {
		selected := labelSel.Matches(labels.Set(c.svc.Labels)) && fieldSel.Matches(fields.Set{"spec.clusterIP": c.svc.Spec.ClusterIP})
		if selected != c.want {
			t.Errorf("%s: selectors match = %v, want %v", c.svc.Name, selected, c.want)
		}
		if got := serviceWanted(c.svc); got != c.want {
			t.Errorf("%s: serviceWanted = %v, want %v", c.svc.Name, got, c.want)
		}
	}
}

func TestEndpointSlicePredicateMatchesSelector(t *testing.T) {
	labelSel, err := labels.Parse(endpointSliceLabelSelector())
	if err != nil {
		t.Fatalf("parsing endpointslice label selector: %v", err)
	}
	cases := []struct {
		slice *discovery.EndpointSlice
		want  bool
	}{
		{testSlice("plain", map[string]string{discovery.LabelServiceName: "svc"}), true},
		{testSlice("headless", map[string]string{v1.IsHeadlessService: ""}), false},
	}
	for _, c := range cases {
		if got := labelSel.Matches(labels.Set(c.slice.Labels)); got != c.want {
			t.Errorf("%s: selector match = %v, want %v", c.slice.Name, got, c.want)
		}
		if got := endpointSliceWanted(c.slice); got != c.want {
			t.Errorf("%s: endpointSliceWanted = %v, want %v", c.slice.Name, got, c.want)
		}
	}
}

func TestInformerHandlerDelivers(t *testing.T) {
	rec := newRecorder()
	handler := serviceEvents(rec).informerHandler()
	svc := testService("a", "10.0.0.1", nil)
	changed := testService("a", "10.0.0.2", nil)
	handler.OnAdd(svc, true)
	handler.OnUpdate(svc, changed)
	handler.OnDelete(changed)
	got := names(rec.take())
	want := []string{"add Service default/a", "update Service default/a", "delete Service default/a"}
	if !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func TestInformerHandlerUnwrapsTombstone(t *testing.T) {
	rec := newRecorder()
	sliceHandler := endpointSliceEvents(rec).informerHandler()
	sliceHandler.OnDelete(cache.DeletedFinalStateUnknown{Key: "default/s", Obj: testSlice("s", nil)})
	nodeHandler := nodeEvents(rec, func(*v1.Node) bool { return true }).informerHandler()
	nodeHandler.OnDelete(cache.DeletedFinalStateUnknown{Key: "n", Obj: testNode("n")})
	got := names(rec.take())
	want := []string{"delete EndpointSlice default/s", "delete Node n"}
	if !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func TestInformerHandlerIgnoresWrongTypes(t *testing.T) {
	rec := newRecorder()
	handler := serviceEvents(rec).informerHandler()
	handler.OnAdd(testNode("n"), false)
	handler.OnUpdate(testService("a", "10.0.0.1", nil), testNode("n"))
	handler.OnDelete("not an object")
	handler.OnDelete(cache.DeletedFinalStateUnknown{Key: "default/s", Obj: testSlice("s", nil)})
	handler.OnDelete(nil)
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("wrong-typed objects were delivered: %v", names(got))
	}
}

// TestInformerHandlerFiltering checks that objects entering or leaving the wanted set through an
// update are delivered as add or delete, and unwanted ones not at all.
func TestInformerHandlerFiltering(t *testing.T) {
	rec := newRecorder()
	handler := serviceEvents(rec).informerHandler()
	plain := testService("a", "10.0.0.1", nil)
	claimed := testService("a", "10.0.0.1", map[string]string{"service.kubernetes.io/service-proxy-name": "x"})
	headless := testService("h", v1.ClusterIPNone, nil)
	handler.OnAdd(headless, false)
	handler.OnUpdate(headless, headless)
	handler.OnDelete(headless)
	handler.OnUpdate(plain, claimed)
	handler.OnUpdate(claimed, plain)
	got := names(rec.take())
	want := []string{"delete Service default/a", "add Service default/a"}
	if !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func TestDeliverDiff(t *testing.T) {
	rec := newRecorder()
	events := serviceEvents(rec)
	kept := testService("kept", "10.0.0.1", nil)
	old := map[string]*v1.Service{
		"default/kept":    kept,
		"default/changed": testService("changed", "10.0.0.2", nil),
		"default/gone":    testService("gone", "10.0.0.3", nil),
	}
	cur := map[string]*v1.Service{
		"default/kept":    testService("kept", "10.0.0.1", nil), // equal copy: not delivered
		"default/changed": testService("changed", "10.0.0.22", nil),
		"default/new":     testService("new", "10.0.0.4", nil),
	}
	events.deliverDiff(old, cur)
	got := names(rec.take())
	want := []string{"delete Service default/gone", "update Service default/changed", "add Service default/new"}
	if !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}
