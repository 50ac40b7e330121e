// Package sources holds the two event sources that drive a proxier.Provider: RunAPI watches a
// Kubernetes API server through client-go informers, and RunFiles reads Service, EndpointSlice
// and Node objects from a directory of YAML/JSON files and turns every change into the same
// Add/Update/Delete calls. Both apply the same filtering (the predicates in this file), so a
// Provider cannot tell which source feeds it.
package sources

import (
	"fmt"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// serviceWanted reports whether the proxy handles svc: not claimed by another proxy through the
// service-proxy-name label, and not headless (clusterIP None). It is the client-side twin of
// serviceLabelSelector and serviceFieldSelector.
func serviceWanted(svc *v1.Service) bool {
	if _, claimed := svc.Labels[proxier.LabelServiceProxyName]; claimed {
		return false
	}
	return svc.Spec.ClusterIP != v1.ClusterIPNone
}

// endpointSliceWanted reports whether the proxy handles slice: not one of a headless Service.
// It is the client-side twin of endpointSliceLabelSelector.
func endpointSliceWanted(slice *discovery.EndpointSlice) bool {
	_, headless := slice.Labels[v1.IsHeadlessService]
	return !headless
}

// labelAbsentSelector returns the label selector matching objects without the label key.
func labelAbsentSelector(key string) string { return "!" + key }

// serviceLabelSelector is the server-side label filter for Services.
func serviceLabelSelector() string { return labelAbsentSelector(proxier.LabelServiceProxyName) }

// serviceFieldSelector is the server-side field filter for Services.
func serviceFieldSelector() string {
	return fields.OneTermNotEqualSelector("spec.clusterIP", v1.ClusterIPNone).String()
}

// endpointSliceLabelSelector is the server-side label filter for EndpointSlices.
func endpointSliceLabelSelector() string { return labelAbsentSelector(v1.IsHeadlessService) }

// nodeFieldSelector is the server-side filter selecting only the Node named nodeName.
func nodeFieldSelector(nodeName string) string {
	return fields.OneTermEqualSelector("metadata.name", nodeName).String()
}

// kindEvents delivers the events of one object kind to its handler methods, dropping objects the
// wanted predicate rejects. An update that moves an object out of (into) the wanted set is
// delivered as a delete (add), which is what a server-side selector does to a watch.
type kindEvents[T any] struct {
	kind     string
	wanted   func(T) bool
	onAdd    func(T)
	onUpdate func(old, cur T)
	onDelete func(T)
}

// serviceEvents routes Service events to h.
func serviceEvents(h proxier.ServiceHandler) kindEvents[*v1.Service] {
	return kindEvents[*v1.Service]{
		kind: "Service", wanted: serviceWanted,
		onAdd: h.OnServiceAdd, onUpdate: h.OnServiceUpdate, onDelete: h.OnServiceDelete,
	}
}

// endpointSliceEvents routes EndpointSlice events to h.
func endpointSliceEvents(h proxier.EndpointSliceHandler) kindEvents[*discovery.EndpointSlice] {
	return kindEvents[*discovery.EndpointSlice]{
		kind: "EndpointSlice", wanted: endpointSliceWanted,
		onAdd: h.OnEndpointSliceAdd, onUpdate: h.OnEndpointSliceUpdate, onDelete: h.OnEndpointSliceDelete,
	}
}

// nodeEvents routes Node events to h; wanted selects which Nodes are delivered.
func nodeEvents(h proxier.NodeHandler, wanted func(*v1.Node) bool) kindEvents[*v1.Node] {
	return kindEvents[*v1.Node]{
		kind: "Node", wanted: wanted,
		onAdd: h.OnNodeAdd, onUpdate: h.OnNodeUpdate, onDelete: h.OnNodeDelete,
	}
}

func (k kindEvents[T]) add(obj T) {
	if k.wanted(obj) {
		k.onAdd(obj)
	}
}

func (k kindEvents[T]) update(old, cur T) {
	oldWanted, curWanted := k.wanted(old), k.wanted(cur)
	switch {
	case oldWanted && curWanted:
		k.onUpdate(old, cur)
	case oldWanted:
		k.onDelete(old)
	case curWanted:
		k.onAdd(cur)
	}
}

func (k kindEvents[T]) delete(obj T) {
	if k.wanted(obj) {
		k.onDelete(obj)
	}
}

// informerHandler adapts k to client-go's untyped callbacks. Objects of another type are logged
// and ignored; delete tombstones (cache.DeletedFinalStateUnknown) are unwrapped.
func (k kindEvents[T]) informerHandler() cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if typed, ok := k.typed(obj); ok {
				k.add(typed)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			old, okOld := k.typed(oldObj)
			cur, okCur := k.typed(newObj)
			if okOld && okCur {
				k.update(old, cur)
			}
		},
		DeleteFunc: func(obj any) {
			if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tombstone.Obj
			}
			if typed, ok := k.typed(obj); ok {
				k.delete(typed)
			}
		},
	}
}

// typed asserts obj to T, logging a mismatch.
func (k kindEvents[T]) typed(obj any) (T, bool) {
	typed, ok := obj.(T)
	if !ok {
		klog.ErrorS(nil, "Ignoring informer event with unexpected object type", "kind", k.kind, "type", fmt.Sprintf("%T", obj))
	}
	return typed, ok
}

// deliverDiff delivers the change from old to cur (both keyed by namespace/name, unfiltered) in
// key order: deletes first, then adds and updates. Semantically equal objects are not delivered.
func (k kindEvents[T]) deliverDiff(old, cur map[string]T) {
	for _, key := range sortedKeys(old) {
		if _, kept := cur[key]; !kept {
			k.delete(old[key])
		}
	}
	for _, key := range sortedKeys(cur) {
		previous, existed := old[key]
		switch {
		case !existed:
			k.add(cur[key])
		case !equality.Semantic.DeepEqual(previous, cur[key]):
			k.update(previous, cur[key])
		}
	}
}

func sortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	return keys
}
