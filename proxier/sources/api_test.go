package sources

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// startAPI runs RunAPI in the background; the returned function cancels it and returns its error.
func startAPI(t *testing.T, client *fake.Clientset, rec *recorder) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunAPI(ctx, client, "node-a", time.Hour, rec) }()
	stop := sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(waitTimeout):
			t.Errorf("RunAPI did not return after cancel")
			return nil
		}
	})
	t.Cleanup(func() { _ = stop() })
	return stop
}

func withManagedFields[T metav1.Object](obj T) T {
	obj.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: "test", Operation: metav1.ManagedFieldsOperationApply}})
	return obj
}

func TestRunAPIInitialObjectsAndSynced(t *testing.T) {
	client := fake.NewClientset(
		withManagedFields(testService("web", "10.0.0.1", nil)),
		testService("headless", v1.ClusterIPNone, nil),
		testService("claimed", "10.0.0.2", map[string]string{"service.kubernetes.io/service-proxy-name": "other"}),
		withManagedFields(testSlice("web-1", map[string]string{discovery.LabelServiceName: "web"})),
		testSlice("headless-1", map[string]string{v1.IsHeadlessService: ""}),
		withManagedFields(testNode("node-a")),
		testNode("node-b"),
	)
	rec := newRecorder()
	stop := startAPI(t, client, rec)
	events := rec.waitFor(t, "all synced", allSynced)

	// The synced calls come after every initial object.
	got := sortedNames(events[:len(events)-3])
	want := []string{"add EndpointSlice default/web-1", "add Node node-a", "add Service default/web"}
	if !slices.Equal(got, want) {
		t.Fatalf("initial events = %v, want %v", got, want)
	}
	for _, e := range events {
		if _, isNode := e.obj.(*v1.Node); isNode && len(e.obj.GetManagedFields()) != 0 {
			t.Errorf("%s delivered with managedFields (the Node informer trims its cache)", e)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("RunAPI returned %v after cancel, want nil", err)
	}
}

func TestRunAPIUpdatesAndDeletes(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		testService("web", "10.0.0.1", nil),
		testSlice("web-1", map[string]string{discovery.LabelServiceName: "web"}),
		testNode("node-a"),
	)
	rec := newRecorder()
	startAPI(t, client, rec)
	rec.waitFor(t, "all synced", allSynced)
	rec.take()

	svc := testService("web", "10.0.0.1", nil)
	svc.Spec.Ports[0].Port = 8080
	if _, err := client.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating service: %v", err)
	}
	events := rec.waitForEvent(t, "update Service default/web")
	last := events[len(events)-1]
	if port := last.obj.(*v1.Service).Spec.Ports[0].Port; port != 8080 {
		t.Errorf("updated service port = %d, want 8080", port)
	}
	if old := last.old.(*v1.Service); old.Name != "web" || old.Namespace != "default" {
		t.Errorf("old service = %s/%s, want default/web (its identity: nothing else is kept)", old.Namespace, old.Name)
	}

	claimed := svc.DeepCopy()
	claimed.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "other"}
	if _, err := client.CoreV1().Services("default").Update(ctx, claimed, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("claiming service: %v", err)
	}
	rec.waitForEvent(t, "delete Service default/web")

	if err := client.DiscoveryV1().EndpointSlices("default").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting slice: %v", err)
	}
	rec.waitForEvent(t, "delete EndpointSlice default/web-1")

	node := testNode("node-a")
	node.Labels["zone"] = "b"
	if _, err := client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating node: %v", err)
	}
	rec.waitForEvent(t, "update Node node-a")

	if _, err := client.CoreV1().Nodes().Create(ctx, testNode("node-c"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating other node: %v", err)
	}
	if _, err := client.CoreV1().Services("default").Create(ctx, testService("later", "10.0.0.9", nil), metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating service: %v", err)
	}
	events = rec.waitForEvent(t, "add Service default/later")
	if slices.Contains(names(events), "add Node node-c") {
		t.Errorf("another node's add was delivered: %v", names(events))
	}
}

// TestRunAPISendsSelectors checks the list requests carry the server-side filters (the fake
// clientset does not apply field selectors itself).
func TestRunAPISendsSelectors(t *testing.T) {
	client := fake.NewClientset()
	var mu sync.Mutex
	seen := map[string][2]string{}
	client.PrependReactor("list", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		restrictions := action.(k8stesting.ListAction).GetListRestrictions()
		mu.Lock()
		seen[action.GetResource().Resource] = [2]string{restrictions.Labels.String(), restrictions.Fields.String()}
		mu.Unlock()
		return false, nil, nil
	})
	rec := newRecorder()
	startAPI(t, client, rec)
	rec.waitFor(t, "all synced", allSynced)

	mu.Lock()
	defer mu.Unlock()
	want := map[string][2]string{
		"services":       {"!service.kubernetes.io/service-proxy-name", "spec.clusterIP!=None"},
		"endpointslices": {"!service.kubernetes.io/headless", ""},
		"nodes":          {"", "metadata.name=node-a"},
	}
	for resource, w := range want {
		if got, ok := seen[resource]; !ok || got != w {
			t.Errorf("list %s with selectors %q (listed: %v), want %q", resource, got, ok, w)
		}
	}
}

func TestRunAPIErrorsWhenCachesNeverSync(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("injected list failure")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	rec := newRecorder()
	err := RunAPI(ctx, client, "node-a", time.Hour, rec)
	if err == nil {
		t.Fatalf("RunAPI returned nil although the Service cache never synced")
	}
	if got := rec.snapshot(); slices.ContainsFunc(got, func(e recordedEvent) bool { return e.op == "synced" }) {
		t.Errorf("synced delivered without a cache sync: %v", names(got))
	}
}

// TestWaitSyncedWaitsForEveryCheck: waitSynced returns once every check holds, and with the
// context's cause when it ends first.
func TestWaitSyncedWaitsForEveryCheck(t *testing.T) {
	var calls atomic.Int32
	slow := func() bool { return calls.Add(1) >= 3 } // true from its third call on
	always := func() bool { return true }
	if err := waitSynced(context.Background(), always, slow); err != nil {
		t.Fatalf("waitSynced = %v, want nil", err)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("the slow check was called %d times, want 3 (until it held)", n)
	}

	cause := errors.New("stopped")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(cause)
	if err := waitSynced(ctx, always, func() bool { return false }); !errors.Is(err, cause) {
		t.Errorf("waitSynced after the context ended = %v, want %v", err, cause)
	}
}
