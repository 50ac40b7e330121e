// Package proxier is the mode-neutral core of nodeproxy: the handler interfaces every backend
// implements, the service model, the one change tracker that turns informer events into minimal
// sync batches, and the Core that ties tracker, sync runner, health and metrics to a backend.
//
// A backend implements only Backend (one Sync per checkout); Core implements Provider for it:
//
//	core := proxier.NewCore(proxier.CoreConfig{...}, myBackend)
//	sources.Run(ctx, core)      // informer or file events → core.On*
//	core.SyncLoop(ctx)
package proxier

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// ServiceHandler receives Service events. Implementations must not modify the objects.
type ServiceHandler interface {
	// OnServiceAdd is called when a Service is created.
	OnServiceAdd(service *v1.Service)
	// OnServiceUpdate is called when a Service changes. oldService may carry only the
	// previous object's identity and labels (the API source keeps no copies).
	OnServiceUpdate(oldService, service *v1.Service)
	// OnServiceDelete is called when a Service is deleted (or leaves the proxy's selection).
	// service may carry only its identity, labels and clusterIP (a deletion found by a relist).
	OnServiceDelete(service *v1.Service)
	// OnServiceSynced is called once all initial Services have been delivered.
	OnServiceSynced()
}

// EndpointSliceHandler receives EndpointSlice events. Implementations must not modify the objects.
type EndpointSliceHandler interface {
	// OnEndpointSliceAdd is called when an EndpointSlice is created.
	OnEndpointSliceAdd(slice *discovery.EndpointSlice)
	// OnEndpointSliceUpdate is called when an EndpointSlice changes. oldSlice may carry only
	// the previous object's identity and labels (the API source keeps no copies).
	OnEndpointSliceUpdate(oldSlice, slice *discovery.EndpointSlice)
	// OnEndpointSliceDelete is called when an EndpointSlice is deleted (or leaves the proxy's
	// selection). slice may carry only its identity, labels and address type.
	OnEndpointSliceDelete(slice *discovery.EndpointSlice)
	// OnEndpointSlicesSynced is called once all initial EndpointSlices have been delivered.
	OnEndpointSlicesSynced()
}

// NodeHandler receives events for the proxy's own Node. Implementations must not modify the objects.
type NodeHandler interface {
	// OnNodeAdd is called when the Node appears.
	OnNodeAdd(node *v1.Node)
	// OnNodeUpdate is called when the Node changes.
	OnNodeUpdate(oldNode, node *v1.Node)
	// OnNodeDelete is called when the Node is deleted.
	OnNodeDelete(node *v1.Node)
	// OnNodeSynced is called once the initial Node state has been delivered.
	OnNodeSynced()
}

// Provider is what an event source drives: every proxy mode is a Provider.
type Provider interface {
	ServiceHandler
	EndpointSliceHandler
	NodeHandler
}
