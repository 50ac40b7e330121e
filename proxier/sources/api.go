package sources

import (
	"context"
	"fmt"
	"sync"
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
// proxy and headless ones) and EndpointSlices (minus those of headless Services) through
// reflectors that keep no copy of the objects (reflect.go), and the Node named nodeName
// through an informer with the given resync period. Once all three have listed it calls
// OnServiceSynced, OnEndpointSlicesSynced and OnNodeSynced. It returns nil when ctx is done,
// or an error when ctx ends before the lists arrived. Handler calls for different kinds come
// from different goroutines.
func RunAPI(ctx context.Context, client kubernetes.Interface, nodeName string, resync time.Duration, h proxier.Provider) error {
	nodeFactory := newFactory(client, resync, func(options *metav1.ListOptions) {
		options.FieldSelector = nodeFieldSelector(nodeName)
	})
	defer nodeFactory.Shutdown()
	nodeSynced, err := watchNode(nodeFactory, nodeName, resync, h)
	if err != nil {
		return err
	}
	reflectCtx, stop := context.WithCancel(ctx)
	var reflectors sync.WaitGroup
	defer reflectors.Wait()
	defer stop()
	services := reflectServices(reflectCtx, &reflectors, client, serviceEvents(h))
	slices := reflectEndpointSlices(reflectCtx, &reflectors, client, endpointSliceEvents(h))
	nodeFactory.Start(ctx.Done())
	if err := waitSynced(ctx, services.HasSynced, slices.HasSynced, nodeSynced); err != nil {
		return fmt.Errorf("waiting for Service, EndpointSlice and Node caches to sync: %w", err)
	}
	klog.InfoS("API caches synced", "node", nodeName)
	h.OnServiceSynced()
	h.OnEndpointSlicesSynced()
	h.OnNodeSynced()
	<-ctx.Done()
	return nil
}

// syncedPollInterval is how often waitSynced checks the caches. client-go's WaitForCacheSync
// checks every 100 ms, which delayed the first sync by 50 ms on average (up to 100 ms); a
// check is a few atomic loads.
const syncedPollInterval = 5 * time.Millisecond

// waitSynced waits until every check reports true, or returns ctx's cause.
func waitSynced(ctx context.Context, checks ...cache.InformerSynced) error {
	tick := time.NewTicker(syncedPollInterval)
	defer tick.Stop()
	for {
		synced := true
		for _, c := range checks {
			synced = synced && c()
		}
		if synced {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-tick.C:
		}
	}
}

// newFactory builds an informer factory with the resync period, the list tweak and the
// trimming transform.
func newFactory(client kubernetes.Interface, resync time.Duration, tweak func(*metav1.ListOptions)) informers.SharedInformerFactory {
	return informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTransform(trimObject),
		informers.WithTweakListOptions(tweak))
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
