package proxier

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// testService returns a ClusterIP Service with the given TCP ports (named p<port>).
func testService(ns, name, clusterIP string, ports ...int32) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}},
	}
	for _, p := range ports {
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: fmt.Sprintf("p%d", p), Port: p, Protocol: v1.ProtocolTCP})
	}
	return svc
}

// testSlice returns an IPv4 slice for the Service with one ready endpoint per IP, on each port.
func testSlice(ns, svc, slice string, ports []int32, ips ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: slice, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, p := range ports {
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To(fmt.Sprintf("p%d", p)), Port: ptr.To(p), Protocol: ptr.To(v1.ProtocolTCP)})
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node-a")})
	}
	return s
}

func changeNames(c *Checkout) []string {
	var out []string
	for _, ch := range c.Changes {
		out = append(out, ch.Name.String()+"/"+string(ch.Name.Protocol))
	}
	return out
}

func TestTrackerOneSliceChangeAmongTenThousand(t *testing.T) {
	tr := NewTracker(v1.IPv4Protocol, "node-a")
	const n = 10000
	services := make([]*v1.Service, n)
	slices := make([]*discovery.EndpointSlice, n)
	for i := range n {
		ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		services[i] = testService("ns", fmt.Sprintf("svc-%d", i), ip, 80)
		slices[i] = testSlice("ns", fmt.Sprintf("svc-%d", i), fmt.Sprintf("svc-%d-abc", i), []int32{80}, fmt.Sprintf("10.244.%d.%d", i/250, i%250+1))
		tr.UpdateService(nil, services[i])
		tr.UpdateEndpointSlice(slices[i], false)
	}
	first := tr.Checkout()
	if len(first.Changes) != n {
		t.Fatalf("initial checkout: got %d changes, want %d", len(first.Changes), n)
	}
	if got := tr.ServicePortCount(); got != n {
		t.Fatalf("ServicePortCount = %d, want %d", got, n)
	}

	changed := slices[4242].DeepCopy()
	changed.Endpoints = append(changed.Endpoints, discovery.Endpoint{Addresses: []string{"10.244.200.1"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	if !tr.UpdateEndpointSlice(changed, false) {
		t.Fatal("a real slice change left nothing pending")
	}
	got := tr.Checkout()
	if names := changeNames(got); len(names) != 1 || names[0] != "ns/svc-4242:p80/TCP" {
		t.Fatalf("checkout after one slice change = %v, want exactly [ns/svc-4242:p80/TCP]", names)
	}
	ch := got.Changes[0]
	if len(ch.PreviousEndpoints) != 1 || len(ch.Endpoints) != 2 || ch.Previous == nil || ch.Current == nil {
		t.Fatalf("change carries wrong state: prev=%d eps=%d", len(ch.PreviousEndpoints), len(ch.Endpoints))
	}
}

func TestTrackerResyncYieldsNothing(t *testing.T) {
	tr := NewTracker(v1.IPv4Protocol, "node-a")
	svc := testService("ns", "web", "10.96.0.10", 80, 443)
	slice := testSlice("ns", "web", "web-1", []int32{80, 443}, "10.244.1.2", "10.244.1.3")
	tr.UpdateService(nil, svc)
	tr.UpdateEndpointSlice(slice, false)
	tr.Checkout()

	// Informer resync: identical objects; then a metadata-only change.
	if tr.UpdateService(svc, svc.DeepCopy()) {
		t.Error("resync of an unchanged Service left work pending")
	}
	if tr.UpdateEndpointSlice(slice.DeepCopy(), false) {
		t.Error("resync of an unchanged slice left work pending")
	}
	meta := svc.DeepCopy()
	meta.ResourceVersion = "2"
	meta.Annotations = map[string]string{"touched": "yes"}
	if tr.UpdateService(svc, meta) {
		t.Error("a metadata-only Service change left work pending")
	}
	if c := tr.Checkout(); len(c.Changes) != 0 {
		t.Errorf("checkout after resync = %v, want nothing", changeNames(c))
	}
}

func TestTrackerChangeAndUndoIsNoOp(t *testing.T) {
	tr := NewTracker(v1.IPv4Protocol, "node-a")
	svc := testService("ns", "web", "10.96.0.10", 80)
	tr.UpdateService(nil, svc)
	tr.Checkout()
	moved := svc.DeepCopy()
	moved.Spec.Ports[0].Port = 8080
	if !tr.UpdateService(svc, moved) {
		t.Fatal("a port change left nothing pending")
	}
	if tr.UpdateService(moved, svc) {
		t.Error("undoing the change still left work pending")
	}
	if c := tr.Checkout(); len(c.Changes) != 0 {
		t.Errorf("checkout = %v, want nothing", changeNames(c))
	}
}

func TestTrackerOnlyChangedPortOfMultiPortService(t *testing.T) {
	tr := NewTracker(v1.IPv4Protocol, "node-a")
	tr.UpdateService(nil, testService("ns", "web", "10.96.0.10", 80, 443))
	tr.UpdateEndpointSlice(testSlice("ns", "web", "web-80", []int32{80}, "10.244.1.2"), false)
	tr.UpdateEndpointSlice(testSlice("ns", "web", "web-443", []int32{443}, "10.244.1.2"), false)
	tr.Checkout()

	tr.UpdateEndpointSlice(testSlice("ns", "web", "web-443", []int32{443}, "10.244.1.2", "10.244.1.9"), false)
	if names := changeNames(tr.Checkout()); len(names) != 1 || names[0] != "ns/web:p443/TCP" {
		t.Fatalf("checkout = %v, want only ns/web:p443/TCP", names)
	}
}

func TestTrackerServiceDeleteAndEndpointsBeforeService(t *testing.T) {
	tr := NewTracker(v1.IPv4Protocol, "node-a")
	// Slices may arrive before their Service: no rules yet, but the endpoints are remembered.
	tr.UpdateEndpointSlice(testSlice("ns", "web", "web-1", []int32{80}, "10.244.1.2"), false)
	if c := tr.Checkout(); len(c.Changes) != 0 {
		t.Fatalf("endpoints without a Service produced changes %v", changeNames(c))
	}
	svc := testService("ns", "web", "10.96.0.10", 80)
	tr.UpdateService(nil, svc)
	c := tr.Checkout()
	if len(c.Changes) != 1 || len(c.Changes[0].Endpoints) != 1 || c.Changes[0].Previous != nil {
		t.Fatalf("new Service: %+v, want one new port with its earlier endpoint", c.Changes)
	}
	tr.UpdateService(svc, nil)
	c = tr.Checkout()
	if len(c.Changes) != 1 || c.Changes[0].Current != nil || c.Changes[0].Previous == nil {
		t.Fatalf("deleted Service: %+v, want one removed port", c.Changes)
	}
	if tr.ServicePortCount() != 0 {
		t.Errorf("ServicePortCount = %d after delete, want 0", tr.ServicePortCount())
	}
}

func TestTrackerFamiliesAndSkippedServices(t *testing.T) {
	v4, v6 := NewTracker(v1.IPv4Protocol, "n"), NewTracker(v1.IPv6Protocol, "n")
	dual := testService("ns", "dual", "10.96.0.10", 53)
	dual.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::a"}
	headless := testService("ns", "headless", v1.ClusterIPNone, 80)
	claimed := testService("ns", "claimed", "10.96.0.11", 80)
	claimed.Labels = map[string]string{LabelServiceProxyName: "other-proxy"}
	for _, tr := range []*Tracker{v4, v6} {
		for _, s := range []*v1.Service{dual, headless, claimed} {
			tr.UpdateService(nil, s)
		}
	}
	c4, c6 := v4.Checkout(), v6.Checkout()
	if len(c4.Changes) != 1 || c4.Changes[0].Current.ClusterIP != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("IPv4 checkout = %v, want only dual with 10.96.0.10", changeNames(c4))
	}
	if len(c6.Changes) != 1 || c6.Changes[0].Current.ClusterIP != netip.MustParseAddr("fd00:10:96::a") {
		t.Errorf("IPv6 checkout = %v, want only dual with fd00:10:96::a", changeNames(c6))
	}
}

func TestTrackerTriggerTime(t *testing.T) {
	tr := NewTracker(v1.IPv4Protocol, "n")
	tr.UpdateService(nil, testService("ns", "web", "10.96.0.10", 80))
	s := testSlice("ns", "web", "web-1", []int32{80}, "10.244.1.2")
	when := time.Now().Add(time.Second).UTC().Truncate(time.Millisecond)
	s.Annotations = map[string]string{TriggerTimeAnnotation: when.Format(time.RFC3339Nano)}
	tr.UpdateEndpointSlice(s, false)
	if c := tr.Checkout(); !c.OldestTrigger.Equal(when) {
		t.Errorf("OldestTrigger = %v, want %v", c.OldestTrigger, when)
	}
	if c := tr.Checkout(); !c.OldestTrigger.IsZero() {
		t.Errorf("second checkout kept trigger time %v", c.OldestTrigger)
	}
}

// TestCheckoutOfManyServicesInParallel: a Checkout large enough to run on several goroutines
// returns every changed port once, in name order, with its endpoints, and leaves the applied
// state complete (run with -race, it also checks the goroutines share nothing they write).
func TestCheckoutOfManyServicesInParallel(t *testing.T) {
	procs := runtime.GOMAXPROCS(4)
	t.Cleanup(func() { runtime.GOMAXPROCS(procs) })
	const n = 4 * checkoutChunkMin
	tr := NewTracker(v1.IPv4Protocol, "node-a")
	for i := range n {
		name := fmt.Sprintf("svc-%04d", i)
		tr.UpdateService(nil, testService("ns", name, fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80))
		tr.UpdateEndpointSlice(testSlice("ns", name, name+"-1", []int32{80}, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)), false)
	}
	c := tr.Checkout()
	if len(c.Changes) != n || tr.ServicePortCount() != n {
		t.Fatalf("%d changes, %d applied ports; want %d each", len(c.Changes), tr.ServicePortCount(), n)
	}
	for i, ch := range c.Changes {
		want := fmt.Sprintf("svc-%04d", i)
		if ch.Name.Name != want || ch.Current == nil || ch.Previous != nil || len(ch.Endpoints) != 1 ||
			ch.Endpoints[0].IP.String() != fmt.Sprintf("10.1.%d.%d", i/250, i%250+1) {
			t.Fatalf("change %d: %s current=%v previous=%v endpoints=%v; want %s, new, one endpoint", i, ch.Name, ch.Current != nil, ch.Previous != nil, ch.Endpoints, want)
		}
	}
	for i := 0; i < n; i += 2 { // every other Service gets a second endpoint
		name := fmt.Sprintf("svc-%04d", i)
		tr.UpdateEndpointSlice(testSlice("ns", name, name+"-1", []int32{80}, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), "10.2.0.1"), false)
	}
	c = tr.Checkout()
	if len(c.Changes) != n/2 {
		t.Fatalf("%d changes after updating %d Services, want %d", len(c.Changes), n/2, n/2)
	}
	for _, ch := range c.Changes {
		if len(ch.Endpoints) != 2 || len(ch.PreviousEndpoints) != 1 {
			t.Fatalf("change %s: %d endpoints (previously %d), want 2 (1)", ch.Name, len(ch.Endpoints), len(ch.PreviousEndpoints))
		}
	}
	if c := tr.Checkout(); len(c.Changes) != 0 {
		t.Errorf("a Checkout without events has %d changes", len(c.Changes))
	}
}
