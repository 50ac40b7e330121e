package sources

import (
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/watchlist"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

func TestEventStoreDeliversWritesAndRelistDeletions(t *testing.T) {
	rec := newRecorder()
	store := newEventStore(endpointSliceEvents(rec), endpointSliceStubs)
	web := testSlice("web-1", map[string]string{discovery.LabelServiceName: "web"})
	api := testSlice("api-1", map[string]string{discovery.LabelServiceName: "api"})
	if err := store.Replace([]any{web, api}, "1"); err != nil {
		t.Fatal(err)
	}
	if !store.HasSynced() {
		t.Fatalf("not synced after the first list")
	}
	webChanged := web.DeepCopy()
	webChanged.Endpoints = nil
	for _, step := range []func() error{
		func() error { return store.Update(webChanged) },
		func() error { return store.Delete(api) },
		func() error { return store.Add(api) },
		// A relist without api-1 deletes it; web-1 again is an update.
		func() error { return store.Replace([]any{web.DeepCopy()}, "2") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	got := names(rec.snapshot())
	want := []string{
		"add EndpointSlice default/web-1", "add EndpointSlice default/api-1",
		"update EndpointSlice default/web-1", "delete EndpointSlice default/api-1",
		"add EndpointSlice default/api-1", "update EndpointSlice default/web-1",
		"delete EndpointSlice default/api-1",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events = %v\nwant     %v", got, want)
	}
	last := rec.snapshot()[len(want)-1].obj.(*discovery.EndpointSlice)
	if last.Labels[discovery.LabelServiceName] != "api" || last.AddressType != api.AddressType {
		t.Errorf("relist deletion delivered %+v, want api-1's identity, service label and address type", last)
	}
	if err := store.Add(&v1.Service{}); err == nil {
		t.Errorf("a Service in the EndpointSlice store was accepted")
	}
}

func TestEventStoreLeavingTheSelectionIsADelete(t *testing.T) {
	rec := newRecorder()
	store := newEventStore(serviceEvents(rec), serviceStubs)
	if err := store.Replace([]any{testService("web", "10.0.0.1", nil)}, "1"); err != nil {
		t.Fatal(err)
	}
	if err := store.Update(testService("web", "10.0.0.1", map[string]string{"service.kubernetes.io/service-proxy-name": "other"})); err != nil {
		t.Fatal(err)
	}
	if err := store.Update(testService("web", "10.0.0.1", nil)); err != nil {
		t.Fatal(err)
	}
	got := names(rec.snapshot())
	want := []string{"add Service default/web", "delete Service default/web", "add Service default/web"}
	if !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func TestReflectorsDeclineWatchList(t *testing.T) {
	lw := listWatch(func(*metav1.ListOptions) {}, nil, nil)
	if !watchlist.DoesClientNotSupportWatchListSemantics(lw) {
		t.Errorf("the reflectors' ListerWatcher accepts watch-list, which gathers every object before delivering any")
	}
	if _, ok := lw.(cache.ListerWatcherWithContext); !ok {
		t.Errorf("the ListerWatcher lost its context-aware methods")
	}
}
