package sources

import (
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// fullMeta is object metadata with every field the lean filters drop or keep set.
func fullMeta(name string) metav1.ObjectMeta {
	now := metav1.Unix(1700000000, 0)
	return metav1.ObjectMeta{
		Name: name, GenerateName: name + "-", Namespace: "ns", SelfLink: "/self", UID: types.UID("uid-" + name),
		ResourceVersion: "42", Generation: 3, CreationTimestamp: now, DeletionTimestamp: &now,
		DeletionGracePeriodSeconds: ptr.To(int64(30)),
		Labels:                     map[string]string{discovery.LabelServiceName: "svc", "app": "x"},
		Annotations:                map[string]string{proxier.TriggerTimeAnnotation: "2026-11-23T10:00:00Z", "other": "y"},
		OwnerReferences:            []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: "svc", UID: "u"}},
		Finalizers:                 []string{"f"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "m", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
			Time: &now, FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:metadata":{}}`)}}},
	}
}

// leanMeta is what the lean filters keep of fullMeta (with the annotations kept).
func leanMeta(m metav1.ObjectMeta, annotations map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		DeletionTimestamp: m.DeletionTimestamp, Labels: m.Labels, Annotations: annotations}
}

// leanDecode filters data with f and decodes the result into into.
func leanDecode(t *testing.T, f leanFilter, data []byte, into protoItem) {
	t.Helper()
	var scratch leanScratch
	out, err := f.filter(nil, data, &scratch, 0)
	if err != nil {
		t.Fatalf("filter: %v", err)
	}
	if err := into.Unmarshal(out); err != nil {
		t.Fatalf("decoding the filtered item: %v", err)
	}
}

// TestLeanServiceIsTheServiceWithoutWhatTheProxyNeverReads: a Service decoded through the lean
// filter equals the Service with the dropped fields cleared: metadata reduced, no annotations,
// status without conditions, the whole spec kept.
func TestLeanServiceIsTheServiceWithoutWhatTheProxyNeverReads(t *testing.T) {
	svc := &v1.Service{
		ObjectMeta: fullMeta("svc"),
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports:                    []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: 30080}},
			ExternalIPs:              []string{"203.0.113.5"},
			LoadBalancerSourceRanges: []string{"192.0.2.0/24"}, ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
			HealthCheckNodePort: 31000, SessionAffinity: v1.ServiceAffinityClientIP,
			SessionAffinityConfig: &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(60))}}},
		Status: v1.ServiceStatus{
			LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{{IP: "203.0.113.9", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)}}},
			Conditions:   []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue, Reason: "r", LastTransitionTime: metav1.Unix(1, 0)}},
		},
	}
	data, err := svc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got := &v1.Service{}
	leanDecode(t, serviceFilter, data, got)
	want := svc.DeepCopy()
	want.ObjectMeta = leanMeta(svc.ObjectMeta, nil)
	want.Status.Conditions = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("lean Service:\n got %+v\nwant %+v", got, want)
	}
}

// TestLeanEndpointSliceKeepsWhatEndpointChoiceReads: an EndpointSlice decoded through the lean
// filter keeps its ports, address type and each endpoint's addresses, conditions, node, zone
// and hints, and of its annotations the trigger time; hostnames, target references and the
// deprecated topology go.
func TestLeanEndpointSliceKeepsWhatEndpointChoiceReads(t *testing.T) {
	slice := &discovery.EndpointSlice{
		ObjectMeta:  fullMeta("svc-abc"),
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(int32(8080)), AppProtocol: ptr.To("h2c")}},
		Endpoints: []discovery.Endpoint{{
			Addresses:          []string{"10.1.0.1"},
			Conditions:         discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			Hostname:           ptr.To("pod-1"),
			TargetRef:          &v1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "pod-1", UID: "p1"},
			DeprecatedTopology: map[string]string{"k": "v"},
			NodeName:           ptr.To("node-a"), Zone: ptr.To("z1"),
			Hints: &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "z1"}}, ForNodes: []discovery.ForNode{{Name: "node-a"}}},
		}, {Addresses: []string{"10.1.0.2"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(false)}}},
	}
	data, err := slice.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got := &discovery.EndpointSlice{}
	leanDecode(t, endpointSliceFilter, data, got)
	want := slice.DeepCopy()
	want.ObjectMeta = leanMeta(slice.ObjectMeta, map[string]string{proxier.TriggerTimeAnnotation: "2026-11-23T10:00:00Z"})
	want.Endpoints[0].Hostname, want.Endpoints[0].TargetRef, want.Endpoints[0].DeprecatedTopology = nil, nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("lean EndpointSlice:\n got %+v\nwant %+v", got, want)
	}
}

// TestLeanFilterRefusesMalformedItems: every truncation of an encoded item is either a shorter
// valid message or an error, never a panic, and bytes that are no protobuf are an error.
func TestLeanFilterRefusesMalformedItems(t *testing.T) {
	slice := &discovery.EndpointSlice{ObjectMeta: fullMeta("s"), AddressType: discovery.AddressTypeIPv4,
		Endpoints: []discovery.Endpoint{{Addresses: []string{"10.1.0.1"}, TargetRef: &v1.ObjectReference{Name: "p"}}}}
	data, err := slice.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var scratch leanScratch
	errs := 0
	for n := range len(data) {
		if _, err := endpointSliceFilter.filter(nil, data[:n], &scratch, 0); err != nil {
			errs++
		}
	}
	if errs == 0 {
		t.Error("no truncation of the item was refused")
	}
	for _, bad := range [][]byte{{0xff}, {0x0a, 0x05, 0x01}, {0x0b}, {0x0a, 0x02, 0x62, 0x01}} {
		if _, err := endpointSliceFilter.filter(nil, bad, &scratch, 0); err == nil {
			t.Errorf("filter(% x) = nil error, want one", bad)
		}
	}
}

// TestNewEndpointSliceIsSizedForItsEndpoints: the slice decoded into has room for exactly the
// encoded endpoints, and decodes to what a plain EndpointSlice does.
func TestNewEndpointSliceIsSizedForItsEndpoints(t *testing.T) {
	for _, n := range []int{0, 1, 10} {
		slice := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "s"}, AddressType: discovery.AddressTypeIPv4,
			Ports: []discovery.EndpointPort{{Port: ptr.To(int32(80))}}}
		for i := range n {
			slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{Addresses: []string{"10.0.0." + string(rune('1'+i))}})
		}
		data, err := slice.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got := newEndpointSlice(data)
		if cap(got.Endpoints) != n {
			t.Errorf("%d endpoints: capacity %d", n, cap(got.Endpoints))
		}
		plain := &discovery.EndpointSlice{}
		if err := got.Unmarshal(data); err != nil {
			t.Fatal(err)
		}
		if err := plain.Unmarshal(data); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, plain) {
			t.Errorf("%d endpoints: decoded %+v, want %+v", n, got, plain)
		}
	}
}
