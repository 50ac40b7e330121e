package sources

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// Services and EndpointSlices are watched through bare reflectors whose store keeps no
// objects: the proxy's tracker already holds what it needs of them (service ports, a compact
// form of each slice), so an informer's cache would be a second, larger copy, and its
// DeltaFIFO and listener queues a copy in flight: at 10,000 Services x 10 endpoints the
// informer caches alone held ~40 MiB. The reflector still lists, watches, relists after
// errors and follows bookmarks; the store turns what it writes into handler calls.

// eventStore is a cache.ReflectorStore that delivers the reflector's writes to a handler and
// remembers, per object key, only a stub of the object (what the filters and the handlers'
// deletes read), so that a relist can deliver the deletions it implies. The reflector calls it
// from one goroutine; HasSynced may be called from any.
type eventStore[T runtime.Object] struct {
	events kindEvents[T]
	kind   stubKind[T]
	mu     sync.Mutex
	known  map[string]objectStub
	// streaming is true from the start of a streamed list (stream.go) until the reflector's
	// Replace, which then receives no items, completes it. streamed are the keys it delivered,
	// kept only when the store knew objects as it began (a list into an empty store lists all
	// the store knows at its end: at 10,000 objects the keys cost a map of 10,000 strings).
	streaming bool
	streamed  map[string]bool
	synced    atomic.Bool
}

// objectStub is what an eventStore keeps of an object besides its key.
type objectStub struct {
	// label is the one label value the kind's filter or deletes read; extra is one field.
	label, extra string
}

// stubKind turns objects of one kind into stubs and stubs back into (partial) objects.
type stubKind[T runtime.Object] struct {
	compact func(T) objectStub
	expand  func(namespace, name string, stub objectStub) T
}

// newEventStore returns a store delivering to events.
func newEventStore[T runtime.Object](events kindEvents[T], kind stubKind[T]) *eventStore[T] {
	return &eventStore[T]{events: events, kind: kind, known: map[string]objectStub{}}
}

// stubbed returns the partial object a stub stands for.
func (s *eventStore[T]) stubbed(key string, stub objectStub) T {
	namespace, name, _ := cache.SplitMetaNamespaceKey(key)
	return s.kind.expand(namespace, name, stub)
}

// Add implements cache.ReflectorStore: an add, or an update of a known object.
func (s *eventStore[T]) Add(obj any) error {
	typed, key, err := s.keyed(obj)
	if err != nil {
		return err
	}
	s.deliver(typed, key)
	return nil
}

// deliver records the object under key and delivers it as an add or an update.
func (s *eventStore[T]) deliver(typed T, key string) {
	s.mu.Lock()
	old, existed := s.known[key]
	s.known[key] = s.kind.compact(typed)
	s.mu.Unlock()
	if existed {
		s.events.update(s.stubbed(key, old), typed)
	} else {
		s.events.add(typed)
	}
}

// Update implements cache.ReflectorStore.
func (s *eventStore[T]) Update(obj any) error { return s.Add(obj) }

// Delete implements cache.ReflectorStore.
func (s *eventStore[T]) Delete(obj any) error {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	typed, key, err := s.keyed(obj)
	if err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.known, key)
	s.mu.Unlock()
	s.events.delete(typed)
	return nil
}

// beginStreamedList implements listSink: a list starts whose items come through listedItem.
func (s *eventStore[T]) beginStreamedList() {
	s.mu.Lock()
	s.streaming, s.streamed = true, nil
	if len(s.known) > 0 {
		s.streamed = make(map[string]bool, len(s.known))
	}
	s.mu.Unlock()
}

// abandonStreamedList implements listSink: the list failed; the objects it delivered stay
// known (and are updated or deleted by the next list).
func (s *eventStore[T]) abandonStreamedList() {
	s.mu.Lock()
	s.streaming, s.streamed = false, nil
	s.mu.Unlock()
}

// listedItem implements listSink: it delivers one item of a streamed list.
func (s *eventStore[T]) listedItem(obj T) error {
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return fmt.Errorf("%s store: %w", s.events.kind, err)
	}
	s.mu.Lock()
	if !s.streaming { // not begun (cannot happen): keep the keys, Replace then deletes the others
		s.streaming, s.streamed = true, map[string]bool{}
	}
	if s.streamed != nil {
		s.streamed[key] = true
	}
	s.mu.Unlock()
	s.deliver(obj, key)
	return nil
}

// Replace implements cache.ReflectorStore: the objects of a (re)list, together with those a
// streamed list delivered before. Known objects missing from both are deleted, the listed ones
// added or updated; the store is synced afterwards.
func (s *eventStore[T]) Replace(list []any, _ string) error {
	s.mu.Lock()
	listed, streaming := s.streamed, s.streaming
	s.streaming, s.streamed = false, nil
	s.mu.Unlock()
	everyKnownListed := streaming && listed == nil // a streamed list into an empty store
	if listed == nil {
		listed = make(map[string]bool, len(list))
	}
	for i, obj := range list {
		typed, key, err := s.keyed(obj)
		if err != nil {
			return err
		}
		listed[key] = true
		s.deliver(typed, key)
		list[i] = nil // the store owns the list: let the object go as soon as it is delivered
	}
	s.mu.Lock()
	var gone []T
	for key, stub := range s.known {
		if !everyKnownListed && !listed[key] {
			gone = append(gone, s.stubbed(key, stub))
			delete(s.known, key)
		}
	}
	s.mu.Unlock()
	for _, obj := range gone {
		s.events.delete(obj)
	}
	s.synced.Store(true)
	return nil
}

// Resync implements cache.ReflectorStore: nothing to do, since handlers only act on changes.
func (s *eventStore[T]) Resync() error { return nil }

// HasSynced reports whether the first list has been delivered.
func (s *eventStore[T]) HasSynced() bool { return s.synced.Load() }

// keyed asserts obj to T and returns its namespace/name key.
func (s *eventStore[T]) keyed(obj any) (T, string, error) {
	typed, ok := obj.(T)
	if !ok {
		var zero T
		return zero, "", fmt.Errorf("%s store: unexpected object type %T", s.events.kind, obj)
	}
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return typed, "", fmt.Errorf("%s store: %w", s.events.kind, err)
	}
	return typed, key, nil
}

// serviceStubs keep what serviceWanted reads: the service-proxy-name label and clusterIP.
var serviceStubs = stubKind[*v1.Service]{
	compact: func(svc *v1.Service) objectStub {
		return objectStub{label: svc.Labels[proxier.LabelServiceProxyName], extra: svc.Spec.ClusterIP}
	},
	expand: func(namespace, name string, stub objectStub) *v1.Service {
		svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Spec: v1.ServiceSpec{ClusterIP: stub.extra}}
		if stub.label != "" {
			svc.Labels = map[string]string{proxier.LabelServiceProxyName: stub.label}
		}
		return svc
	},
}

// endpointSliceStubs keep what a slice's delete reads (its service-name label and address
// type); slices of headless Services are never delivered, so that label is not kept.
var endpointSliceStubs = stubKind[*discovery.EndpointSlice]{
	compact: func(slice *discovery.EndpointSlice) objectStub {
		return objectStub{label: slice.Labels[discovery.LabelServiceName], extra: string(slice.AddressType)}
	},
	expand: func(namespace, name string, stub objectStub) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{discovery.LabelServiceName: stub.label}},
			AddressType: discovery.AddressType(stub.extra),
		}
	},
}

// listWatch is a ListerWatcher of one resource with the list options tweaked. It declines
// client-go's watch-list mode (an initial list streamed as watch events), in which the reflector
// gathers every object in a temporary store before handing them over: the streamed list
// (stream.go) delivers each object as it is decoded and keeps none.
func listWatch(tweak func(*metav1.ListOptions),
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.ListerWatcher {
	return listOnly{&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			tweak(&opts)
			return list(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			tweak(&opts)
			return watchFn(ctx, opts)
		},
	}}
}

// listOnly is a ListWatch that tells the reflector not to use watch-list semantics.
type listOnly struct{ *cache.ListWatch }

// IsWatchListSemanticsUnSupported is what client-go's reflector asks before a watch-list.
func (listOnly) IsWatchListSemanticsUnSupported() bool { return true }

// reflectServices starts a reflector delivering Services to events; it runs until ctx is done
// (wg tracks it).
func reflectServices(ctx context.Context, wg *sync.WaitGroup, client kubernetes.Interface, events kindEvents[*v1.Service]) *eventStore[*v1.Service] {
	store := newEventStore(events, serviceStubs)
	lw := listWatch(func(o *metav1.ListOptions) {
		o.LabelSelector, o.FieldSelector = serviceLabelSelector(), serviceFieldSelector()
	}, streamedOr(client.CoreV1().RESTClient(), "services", store, serviceFilter,
		func([]byte) *v1.Service { return &v1.Service{} },
		func(m metav1.ListMeta) runtime.Object { return &v1.ServiceList{ListMeta: m} },
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.CoreV1().Services("").List(ctx, o)
		}), func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		return client.CoreV1().Services("").Watch(ctx, o)
	})
	runReflector(ctx, wg, lw, &v1.Service{}, store, "Service")
	return store
}

// reflectEndpointSlices starts a reflector delivering EndpointSlices to events; it runs until
// ctx is done (wg tracks it).
func reflectEndpointSlices(ctx context.Context, wg *sync.WaitGroup, client kubernetes.Interface, events kindEvents[*discovery.EndpointSlice]) *eventStore[*discovery.EndpointSlice] {
	store := newEventStore(events, endpointSliceStubs)
	lw := listWatch(func(o *metav1.ListOptions) {
		o.LabelSelector = endpointSliceLabelSelector()
	}, streamedOr(client.DiscoveryV1().RESTClient(), "endpointslices", store, endpointSliceFilter,
		newEndpointSlice,
		func(m metav1.ListMeta) runtime.Object { return &discovery.EndpointSliceList{ListMeta: m} },
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.DiscoveryV1().EndpointSlices("").List(ctx, o)
		}), func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		return client.DiscoveryV1().EndpointSlices("").Watch(ctx, o)
	})
	runReflector(ctx, wg, lw, &discovery.EndpointSlice{}, store, "EndpointSlice")
	return store
}

// runReflector runs a reflector of expected's type into store until ctx is done.
func runReflector(ctx context.Context, wg *sync.WaitGroup, lw cache.ListerWatcher, expected runtime.Object, store cache.ReflectorStore, kind string) {
	r := cache.NewReflectorWithOptions(lw, expected, store, cache.ReflectorOptions{Name: "nodeproxy " + kind})
	wg.Go(func() { r.RunWithContext(ctx) })
}
