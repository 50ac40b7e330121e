package sources

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// RunAPI feeds h from the API server behind client: Services (minus those claimed by another
// proxy and headless ones), EndpointSlices (minus those of headless Services) and the Node named
// nodeName, each through an informer with the given resync period. Once all three caches have
// synced it calls OnServiceSynced, OnEndpointSlicesSynced and OnNodeSynced. It returns nil when
// ctx is done, or an error when ctx ends before the caches synced. Handler calls for different
// kinds come from different goroutines.
func RunAPI(ctx context.Context, client kubernetes.Interface, nodeName string, resync time.Duration, h proxier.Provider) error {
	serviceFactory := newFactory(client, resync, func(options *metav1.ListOptions) {
		options.LabelSelector = serviceLabelSelector()
		options.FieldSelector = serviceFieldSelector()
	})
	sliceFactory := newFactory(client, resync, func(options *metav1.ListOptions) {
		options.LabelSelector = endpointSliceLabelSelector()
	})
	nodeFactory := newFactory(client, resync, func(options *metav1.ListOptions) {
		options.FieldSelector = nodeFieldSelector(nodeName)
	})
	factories := []informers.SharedInformerFactory{serviceFactory, sliceFactory, nodeFactory}
	defer func() {
		for _, factory := range factories {
			factory.Shutdown()
		}
	}()

	serviceSynced, err := watchServices(serviceFactory, resync, h)
	if err != nil {
		return err
	}
	sliceSynced, err := watchEndpointSlices(sliceFactory, resync, h)
	if err != nil {
		return err
	}
	nodeSynced, err := watchNode(nodeFactory, nodeName, resync, h)
	if err != nil {
		return err
	}
	for _, factory := range factories {
		factory.Start(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), serviceSynced, sliceSynced, nodeSynced) {
		return fmt.Errorf("waiting for Service, EndpointSlice and Node caches to sync: %w", context.Cause(ctx))
	}
	klog.InfoS("API caches synced", "node", nodeName)
	h.OnServiceSynced()
	h.OnEndpointSlicesSynced()
	h.OnNodeSynced()
	<-ctx.Done()
	return nil
}

// newFactory builds an informer factory with the resync period, the list tweak and the
// trimming transform.
func newFactory(client kubernetes.Interface, resync time.Duration, tweak func(*metav1.ListOptions)) informers.SharedInformerFactory {
	return informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTransform(trimObject),
		informers.WithTweakListOptions(tweak))
}

// watchServices registers h for Service events and returns the registration's synced check.
func watchServices(factory informers.SharedInformerFactory, resync time.Duration, h proxier.ServiceHandler) (cache.InformerSynced, error) {
	informer := factory.Core().V1().Services().Informer()
	reg, err := informer.AddEventHandlerWithResyncPeriod(serviceEvents(h).informerHandler(), resync)
	if err != nil {
		return nil, fmt.Errorf("registering Service event handler: %w", err)
	}
	return reg.HasSynced, nil
}

// watchEndpointSlices registers h for EndpointSlice events and returns the registration's
// synced check.
func watchEndpointSlices(factory informers.SharedInformerFactory, resync time.Duration, h proxier.EndpointSliceHandler) (cache.InformerSynced, error) {
	informer := factory.Discovery().V1().EndpointSlices().Informer()
	reg, err := informer.AddEventHandlerWithResyncPeriod(endpointSliceEvents(h).informerHandler(), resync)
	if err != nil {
		return nil, fmt.Errorf("registering EndpointSlice event handler: %w", err)
	}
	return reg.HasSynced, nil
}

// watchNode registers h for events of the Node named nodeName and returns the registration's
// synced check.
func watchNode(factory informers.SharedInformerFactory, nodeName string, resync time.Duration, h proxier.NodeHandler) (cache.InformerSynced, error) {
	informer := factory.Core().V1().Nodes().Informer()
	events := nodeEvents(h, func(node *v1.Node) bool { return node.Name == nodeName })
	reg, err := informer.AddEventHandlerWithResyncPeriod(events.informerHandler(), resync)
	if err != nil {
		return nil, fmt.Errorf("registering Node event handler: %w", err)
	}
	return reg.HasSynced, nil
}
