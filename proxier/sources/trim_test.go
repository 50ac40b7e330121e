package sources

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestTrimObjectKeepsWhatTheProxyReadsOfANode(t *testing.T) {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "z1"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "m"}}},
		Spec: v1.NodeSpec{PodCIDRs: []string{"10.0.0.0/24"}},
		Status: v1.NodeStatus{
			Addresses:  []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.0.2.10"}},
			Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}},
			Images:     []v1.ContainerImage{{Names: []string{"big"}}},
		},
	}
	out, err := trimObject(node)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*v1.Node)
	if got.ManagedFields != nil || got.Status.Images != nil {
		t.Errorf("node keeps unread fields: %+v", got)
	}
	if len(got.Status.Addresses) != 1 || len(got.Status.Conditions) != 1 || got.Labels[v1.LabelTopologyZone] != "z1" || len(got.Spec.PodCIDRs) != 1 {
		t.Errorf("node lost what the proxy reads: %+v", got)
	}
}
