package sources

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/nodeproxy/nodeproxy/proxier"
)

func TestTrimObjectKeepsWhatTheProxyReads(t *testing.T) {
	slice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-abc", Namespace: "ns",
			Labels:          map[string]string{discovery.LabelServiceName: "web"},
			Annotations:     map[string]string{proxier.TriggerTimeAnnotation: "2026-11-23T05:00:00Z", "other": "x"},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "m"}},
			OwnerReferences: []metav1.OwnerReference{{Name: "web"}},
		},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints: []discovery.Endpoint{{
			Addresses:          []string{"10.0.0.1"},
			Conditions:         discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:           ptr.To("node-a"),
			Zone:               ptr.To("z1"),
			Hostname:           ptr.To("web-0"),
			TargetRef:          &v1.ObjectReference{Kind: "Pod", Name: "web-0"},
			DeprecatedTopology: map[string]string{"a": "b"},
		}},
		Ports: []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](80)}},
	}
	out, err := trimObject(slice)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*discovery.EndpointSlice)
	if got.ManagedFields != nil || got.OwnerReferences != nil {
		t.Errorf("managedFields/ownerReferences kept: %+v", got.ObjectMeta)
	}
	if len(got.Annotations) != 1 || got.Annotations[proxier.TriggerTimeAnnotation] == "" {
		t.Errorf("annotations = %v, want only the trigger time", got.Annotations)
	}
	if got.Labels[discovery.LabelServiceName] != "web" || len(got.Ports) != 1 {
		t.Errorf("labels or ports lost: %v %v", got.Labels, got.Ports)
	}
	ep := got.Endpoints[0]
	if ep.TargetRef != nil || ep.Hostname != nil || ep.DeprecatedTopology != nil {
		t.Errorf("endpoint keeps unread fields: %+v", ep)
	}
	if *ep.NodeName != "node-a" || *ep.Zone != "z1" || !*ep.Conditions.Ready || ep.Addresses[0] != "10.0.0.1" {
		t.Errorf("endpoint lost what the proxy reads: %+v", ep)
	}

	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "z1"}},
		Spec:       v1.NodeSpec{PodCIDRs: []string{"10.0.0.0/24"}},
		Status: v1.NodeStatus{
			Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.0.2.10"}},
			Images:    []v1.ContainerImage{{Names: []string{"big"}}},
		},
	}
	out, _ = trimObject(node)
	gotNode := out.(*v1.Node)
	if gotNode.Status.Images != nil || len(gotNode.Status.Addresses) != 1 || gotNode.Labels[v1.LabelTopologyZone] != "z1" || len(gotNode.Spec.PodCIDRs) != 1 {
		t.Errorf("node trimmed wrongly: %+v", gotNode)
	}
}
