package sources

import (
	v1 "k8s.io/api/core/v1"
)

// trimObject is the Node informer's transform: it drops from the cached Node what the proxy
// never reads (metadata.managedFields and ownerReferences, the image list and the other status
// fields beyond addresses and conditions). Services and EndpointSlices are not cached at all
// (reflect.go).
func trimObject(obj any) (any, error) {
	if node, ok := obj.(*v1.Node); ok {
		node.ManagedFields, node.OwnerReferences = nil, nil
		node.Status = v1.NodeStatus{Addresses: node.Status.Addresses, Conditions: node.Status.Conditions}
	}
	return obj, nil
}
