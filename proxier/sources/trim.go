package sources

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// trimObject is the informers' transform: it drops from each object what the proxy never reads,
// so the informer caches hold less (at 10,000 EndpointSlices of 10 endpoints the pod
// references alone are tens of MiB):
//   - every object: metadata.managedFields and ownerReferences;
//   - EndpointSlices: every annotation but the trigger time (the programming-latency metric
//     reads it), and each endpoint's targetRef, hostname and deprecatedTopology;
//   - Nodes: the image list and the other status fields beyond addresses and conditions.
func trimObject(obj any) (any, error) {
	if accessor, err := meta.Accessor(obj); err == nil {
		accessor.SetManagedFields(nil)
		accessor.SetOwnerReferences(nil)
	}
	switch o := obj.(type) {
	case *discovery.EndpointSlice:
		trimEndpointSlice(o)
	case *v1.Node:
		o.Status = v1.NodeStatus{Addresses: o.Status.Addresses, Conditions: o.Status.Conditions}
	}
	return obj, nil
}

// trimEndpointSlice drops the fields of slice the proxy never reads.
func trimEndpointSlice(slice *discovery.EndpointSlice) {
	if trigger, ok := slice.Annotations[proxier.TriggerTimeAnnotation]; ok {
		slice.Annotations = map[string]string{proxier.TriggerTimeAnnotation: trigger}
	} else {
		slice.Annotations = nil
	}
	for i := range slice.Endpoints {
		ep := &slice.Endpoints[i]
		ep.TargetRef, ep.Hostname, ep.DeprecatedTopology = nil, nil, nil
	}
}
