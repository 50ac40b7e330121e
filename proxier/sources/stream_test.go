package sources

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// sinkRecorder is a listSink that records what it is given.
type sinkRecorder struct {
	mu        sync.Mutex
	begun     int
	abandoned int
	items     []string
	got       chan struct{} // receives after each item (buffered)
}

func newSinkRecorder() *sinkRecorder { return &sinkRecorder{got: make(chan struct{}, 100)} }

func (r *sinkRecorder) beginStreamedList() { r.mu.Lock(); r.begun++; r.mu.Unlock() }

func (r *sinkRecorder) abandonStreamedList() { r.mu.Lock(); r.abandoned++; r.mu.Unlock() }

func (r *sinkRecorder) listedItem(svc *v1.Service) error {
	r.mu.Lock()
	r.items = append(r.items, svc.Namespace+"/"+svc.Name+" "+svc.Spec.ClusterIP)
	r.mu.Unlock()
	r.got <- struct{}{}
	return nil
}

// serviceList returns a list of n Services at resource version rv.
func serviceList(n int, rv string) *v1.ServiceList {
	list := &v1.ServiceList{ListMeta: metav1.ListMeta{ResourceVersion: rv}}
	for i := range n {
		svc := testService(string(rune('a'+i)), "10.0.0."+string(rune('1'+i)), nil)
		svc.Spec.Ports = []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}
		list.Items = append(list.Items, *svc)
	}
	return list
}

// encodeList encodes obj as the API server would for the content type.
func encodeList(t *testing.T, obj runtime.Object, contentType string) []byte {
	t.Helper()
	var enc runtime.Encoder = protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)
	if contentType == runtime.ContentTypeJSON {
		enc = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, json.SerializerOptions{})
	}
	var buf bytes.Buffer
	if err := scheme.Codecs.EncoderForVersion(enc, v1.SchemeGroupVersion).Encode(obj, &buf); err != nil {
		t.Fatalf("encoding: %v", err)
	}
	return buf.Bytes()
}

// serviceLister returns a streamedList of Services from a server running handler.
func serviceLister(t *testing.T, handler http.HandlerFunc) (*streamedList[*v1.Service], *sinkRecorder) {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	cfg := &rest.Config{Host: srv.URL, APIPath: "/api", ContentConfig: rest.ContentConfig{
		GroupVersion: &v1.SchemeGroupVersion, NegotiatedSerializer: scheme.Codecs.WithoutConversion(),
		ContentType: runtime.ContentTypeProtobuf,
	}}
	client, err := rest.RESTClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sink := newSinkRecorder()
	return &streamedList[*v1.Service]{client: client, resource: "services", sink: sink,
		newItem: func([]byte) *v1.Service { return &v1.Service{} },
		newList: func(m metav1.ListMeta) runtime.Object { return &v1.ServiceList{ListMeta: m} }}, sink
}

func serve(contentType string, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", contentType)
		_, _ = w.Write(body)
	}
}

func TestStreamedListDeliversItemsAndReturnsTheListMeta(t *testing.T) {
	want := serviceList(3, "42")
	queries := make(chan string, 1)
	lister, sink := serviceLister(t, func(w http.ResponseWriter, r *http.Request) {
		queries <- r.URL.RawQuery
		serve(runtime.ContentTypeProtobuf, encodeList(t, want, runtime.ContentTypeProtobuf))(w, r)
	})
	obj, err := lister.list(context.Background(), metav1.ListOptions{ResourceVersion: "0", LabelSelector: "!x"})
	if err != nil {
		t.Fatal(err)
	}
	list := obj.(*v1.ServiceList)
	if list.ResourceVersion != "42" || len(list.Items) != 0 {
		t.Errorf("returned list: resourceVersion %q with %d items, want 42 and none (streamed)", list.ResourceVersion, len(list.Items))
	}
	wantItems := []string{"default/a 10.0.0.1", "default/b 10.0.0.2", "default/c 10.0.0.3"}
	if !slices.Equal(sink.items, wantItems) || sink.begun != 1 || sink.abandoned != 0 {
		t.Errorf("sink: items %v begun %d abandoned %d, want %v begun 1", sink.items, sink.begun, sink.abandoned, wantItems)
	}
	if query := <-queries; query != "labelSelector=%21x&resourceVersion=0" {
		t.Errorf("query %q does not carry the list options", query)
	}
}

func TestStreamedListDeliversItemsBeforeTheResponseEnds(t *testing.T) {
	body := encodeList(t, serviceList(3, "7"), runtime.ContentTypeProtobuf)
	early := make(chan bool, 1) // whether an item arrived while the response was held back
	var sink *sinkRecorder
	var lister *streamedList[*v1.Service]
	lister, sink = serviceLister(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", runtime.ContentTypeProtobuf)
		_, _ = w.Write(body[:len(body)-10]) // the first item whole, the last one cut
		w.(http.Flusher).Flush()
		select {
		case <-sink.got:
			early <- true
		case <-time.After(5 * time.Second):
			early <- false
		}
		_, _ = w.Write(body[len(body)-10:])
	})
	if _, err := lister.list(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if !<-early {
		t.Errorf("the server held the response back 5 s without an item delivered: the list was not decoded as it arrived")
	}
	if len(sink.items) != 3 {
		t.Errorf("got %d items, want 3", len(sink.items))
	}
}

func TestStreamedListTruncatedResponseIsAnErrorAndAbandoned(t *testing.T) {
	body := encodeList(t, serviceList(3, "7"), runtime.ContentTypeProtobuf)
	lister, sink := serviceLister(t, serve(runtime.ContentTypeProtobuf, body[:len(body)-5]))
	if _, err := lister.list(context.Background(), metav1.ListOptions{}); err == nil {
		t.Fatalf("a truncated list was accepted")
	}
	if sink.abandoned != 1 {
		t.Errorf("abandoned %d times, want 1", sink.abandoned)
	}
}

func TestStreamedListDecodesJSONWhole(t *testing.T) {
	want := serviceList(2, "9")
	lister, sink := serviceLister(t, serve(runtime.ContentTypeJSON, encodeList(t, want, runtime.ContentTypeJSON)))
	obj, err := lister.list(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	list := obj.(*v1.ServiceList)
	if list.ResourceVersion != "9" || len(list.Items) != 2 || list.Items[1].Name != "b" {
		t.Errorf("JSON list decoded as %+v", list)
	}
	if len(sink.items) != 0 || sink.begun != 0 {
		t.Errorf("a JSON list went to the sink: %v", sink.items)
	}
}

func TestStreamedListPassesStatusErrors(t *testing.T) {
	status := &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusGone, Reason: metav1.StatusReasonExpired, Message: "too old"}
	status.APIVersion, status.Kind = "v1", "Status"
	body := encodeList(t, status, runtime.ContentTypeJSON)
	lister, _ := serviceLister(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", runtime.ContentTypeJSON)
		w.WriteHeader(http.StatusGone)
		_, _ = w.Write(body)
	})
	_, err := lister.list(context.Background(), metav1.ListOptions{})
	if !apierrors.IsResourceExpired(err) {
		t.Errorf("error %v is not an Expired status error (the reflector relists on those)", err)
	}
}

func TestStreamedRelistDeletesWhatItDidNotDeliver(t *testing.T) {
	rec := newRecorder()
	store := newEventStore(serviceEvents(rec), serviceStubs)
	if err := store.Replace([]any{testService("old", "10.0.0.9", nil), testService("a", "10.0.0.1", nil)}, "1"); err != nil {
		t.Fatal(err)
	}
	store.beginStreamedList()
	if err := store.listedItem(testService("a", "10.0.0.1", nil)); err != nil {
		t.Fatal(err)
	}
	if err := store.Replace(nil, "2"); err != nil {
		t.Fatal(err)
	}
	got := names(rec.snapshot())
	want := []string{"add Service default/old", "add Service default/a", "update Service default/a", "delete Service default/old"}
	if !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	// An abandoned stream leaves nothing behind for the next (unstreamed) relist.
	store.beginStreamedList()
	_ = store.listedItem(testService("b", "10.0.0.2", nil))
	store.abandonStreamedList()
	if err := store.Replace([]any{testService("a", "10.0.0.1", nil)}, "3"); err != nil {
		t.Fatal(err)
	}
	if last := names(rec.snapshot()); last[len(last)-1] != "delete Service default/b" {
		t.Errorf("after an abandoned stream, events end %v, want b deleted", last[len(last)-2:])
	}
}

// TestStreamedListIntoAnEmptyStore: a first streamed list keeps no keys, deletes nothing and
// syncs the store; an abandoned first list followed by a relist still deletes what the relist
// did not deliver.
func TestStreamedListIntoAnEmptyStore(t *testing.T) {
	rec := newRecorder()
	store := newEventStore(serviceEvents(rec), serviceStubs)
	store.beginStreamedList()
	for _, name := range []string{"a", "b"} {
		if err := store.listedItem(testService(name, "10.0.0.1", nil)); err != nil {
			t.Fatal(err)
		}
	}
	if store.streamed != nil {
		t.Errorf("a list into an empty store keeps %d keys", len(store.streamed))
	}
	if err := store.Replace(nil, "1"); err != nil {
		t.Fatal(err)
	}
	if got, want := names(rec.snapshot()), []string{"add Service default/a", "add Service default/b"}; !slices.Equal(got, want) || !store.HasSynced() {
		t.Fatalf("events = %v (synced %t), want %v and synced", got, store.HasSynced(), want)
	}

	rec = newRecorder()
	store = newEventStore(serviceEvents(rec), serviceStubs)
	store.beginStreamedList()
	_ = store.listedItem(testService("a", "10.0.0.1", nil))
	store.abandonStreamedList()
	store.beginStreamedList()
	_ = store.listedItem(testService("b", "10.0.0.2", nil))
	if err := store.Replace(nil, "2"); err != nil {
		t.Fatal(err)
	}
	want := []string{"add Service default/a", "add Service default/b", "delete Service default/a"}
	if got := names(rec.snapshot()); !slices.Equal(got, want) {
		t.Fatalf("after an abandoned first list: events = %v, want %v", got, want)
	}
}

func TestStreamedListBoundsItemsNotTheList(t *testing.T) {
	list := serviceList(3, "5")
	body := encodeList(t, list, runtime.ContentTypeProtobuf)
	one, err := list.Items[0].Marshal()
	if err != nil {
		t.Fatal(err)
	}
	old := maxItemBytes
	t.Cleanup(func() { maxItemBytes = old })
	maxItemBytes = int64(len(one)) + 8 // every item fits, the list does not
	lister, sink := serviceLister(t, serve(runtime.ContentTypeProtobuf, body))
	if _, err := lister.list(context.Background(), metav1.ListOptions{}); err != nil || len(sink.items) != 3 {
		t.Fatalf("a list larger than the item bound: err %v, %d items, want nil and 3", err, len(sink.items))
	}
	maxItemBytes = int64(len(one)) - 1
	if _, err := lister.list(context.Background(), metav1.ListOptions{}); err == nil {
		t.Errorf("an item over the bound was accepted")
	}
}
