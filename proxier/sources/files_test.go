package sources

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
)

const webYAML = `# the web service and its endpoints
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.0.0.1
  ports:
  - name: http
    port: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
- addresses: ["10.1.0.1"]
ports:
- name: http
  port: 8080
---
`

const filteredYAML = `apiVersion: v1
kind: Service
metadata:
  name: headless
  namespace: apps
spec:
  clusterIP: None
---
apiVersion: v1
kind: Service
metadata:
  name: claimed
  namespace: apps
  labels:
    service.kubernetes.io/service-proxy-name: other
spec:
  clusterIP: 10.0.0.5
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: headless-1
  namespace: apps
  labels:
    service.kubernetes.io/headless: ""
addressType: IPv4
endpoints: []
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: ignored
`

const listJSON = `{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "apps"},
     "spec": {"clusterIP": "10.0.0.2", "ports": [{"port": 5432}]}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"zone": "a"}}}
  ]
}
`

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatalf("writing %s: %v", name, err)
	}
}

func removeFile(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatalf("removing %s: %v", name, err)
	}
}

// captureLogs redirects klog to a buffer for the rest of the test; the returned function returns
// what was logged so far.
func captureLogs(t *testing.T) func() string {
	t.Helper()
	var mu sync.Mutex
	var buf bytes.Buffer
	flags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(flags)
	if err := flags.Set("logtostderr", "false"); err != nil {
		t.Fatalf("configuring klog: %v", err)
	}
	klog.SetOutput(lockedWriter{mu: &mu, w: &buf})
	t.Cleanup(func() {
		klog.Flush()
		_ = flags.Set("logtostderr", "true")
		klog.SetOutput(os.Stderr)
	})
	return func() string {
		klog.Flush()
		mu.Lock()
		defer mu.Unlock()
		return buf.String()
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestReloadInitialLoadFiltersAndDefaults(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webYAML)
	writeFile(t, dir, "filtered.yml", filteredYAML)
	writeFile(t, dir, "list.json", listJSON)
	writeFile(t, dir, "notes.txt", "apiVersion: v1\nkind: Service\nmetadata: {name: txt}\n")
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	logs := captureLogs(t)
	rec := newRecorder()
	newFileSource(dir, rec).reload()

	events := rec.take()
	want := []string{"add EndpointSlice default/web-1", "add Node node-a", "add Service apps/db", "add Service default/web"}
	if got := sortedNames(events); !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	for _, e := range events {
		if svc, ok := e.obj.(*v1.Service); ok && svc.Name == "web" && svc.Spec.Ports[0].Port != 80 {
			t.Errorf("web service decoded with port %d, want 80", svc.Spec.Ports[0].Port)
		}
	}
	if out := logs(); !strings.Contains(out, "ConfigMap") || !strings.Contains(out, "filtered.yml") {
		t.Errorf("unknown kind not logged with its file; logs:\n%s", out)
	}
}

func TestReloadDeliversOnlyChanges(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webYAML)
	writeFile(t, dir, "list.json", listJSON)
	rec := newRecorder()
	source := newFileSource(dir, rec)
	source.reload()
	rec.take()

	source.reload()
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("reload without changes delivered %v", names(got))
	}

	writeFile(t, dir, "web.yaml", strings.Replace(webYAML, "port: 8080", "port: 9090", 1))
	source.reload()
	events := rec.take()
	if got, want := names(events), []string{"update EndpointSlice default/web-1"}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if port := *events[0].obj.(*discovery.EndpointSlice).Ports[0].Port; port != 9090 {
		t.Errorf("updated slice port = %d, want 9090", port)
	}

	// Making the Service headless removes it, as a server-side selector would.
	writeFile(t, dir, "web.yaml", strings.Replace(webYAML, "clusterIP: 10.0.0.1", "clusterIP: None", 1))
	source.reload()
	if got, want := names(rec.take()), []string{"delete Service default/web", "update EndpointSlice default/web-1"}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func TestReloadDeletedFileDeletesItsObjects(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webYAML)
	writeFile(t, dir, "list.json", listJSON)
	rec := newRecorder()
	source := newFileSource(dir, rec)
	source.reload()
	rec.take()

	removeFile(t, dir, "list.json")
	source.reload()
	if got, want := names(rec.take()), []string{"delete Service apps/db", "delete Node node-a"}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func TestReloadMalformedFileKeepsPreviousObjects(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webYAML)
	logs := captureLogs(t)
	rec := newRecorder()
	source := newFileSource(dir, rec)
	source.reload()
	rec.take()

	writeFile(t, dir, "web.yaml", "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n")
	writeFile(t, dir, "broken.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: x\n") // no name
	source.reload()
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("malformed files delivered %v", names(got))
	}
	out := logs()
	for _, file := range []string{"web.yaml", "broken.yaml"} {
		if !strings.Contains(out, file) {
			t.Errorf("parse failure of %s not logged; logs:\n%s", file, out)
		}
	}

	// Once fixed, the file's objects are diffed against what it contributed before the typo.
	writeFile(t, dir, "web.yaml", strings.Replace(webYAML, "clusterIP: 10.0.0.1", "clusterIP: 10.0.0.100", 1))
	source.reload()
	if got, want := names(rec.take()), []string{"update Service default/web"}; !slices.Equal(got, want) {
		t.Fatalf("events after fix = %v, want %v", got, want)
	}
}

func TestReloadDuplicateObjectFirstFileWins(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", webYAML)
	writeFile(t, dir, "b.yaml", strings.Replace(webYAML, "clusterIP: 10.0.0.1", "clusterIP: 10.0.0.200", 1))
	logs := captureLogs(t)
	rec := newRecorder()
	source := newFileSource(dir, rec)
	source.reload()

	events := rec.take()
	if got, want := sortedNames(events), []string{"add EndpointSlice default/web-1", "add Service default/web"}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	for _, e := range events {
		if svc, ok := e.obj.(*v1.Service); ok && svc.Spec.ClusterIP != "10.0.0.1" {
			t.Errorf("service taken from the later file: clusterIP %s", svc.Spec.ClusterIP)
		}
	}
	if out := logs(); !strings.Contains(out, "duplicate") || !strings.Contains(out, "b.yaml") {
		t.Errorf("duplicate definition not logged; logs:\n%s", out)
	}

	// Without a.yaml, b.yaml's definition takes over.
	removeFile(t, dir, "a.yaml")
	source.reload()
	events = rec.take()
	if got, want := names(events), []string{"update Service default/web"}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if ip := events[0].obj.(*v1.Service).Spec.ClusterIP; ip != "10.0.0.200" {
		t.Errorf("service clusterIP = %s, want 10.0.0.200", ip)
	}
}

func TestReloadKeepsOnlyOneNode(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "nodes.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-b}\n")
	rec := newRecorder()
	newFileSource(dir, rec).reload()
	if got, want := names(rec.take()), []string{"add Node node-a"}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func TestDecodeFile(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		content string
		want    []string // namespace/name of the decoded objects
		wantErr bool
	}{
		{"empty", "", nil, false},
		{"only separators and comments", "---\n# nothing\n---\n", nil, false},
		{"separator with trailing spaces", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---  \napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\n", []string{"default/a", "x/b"}, false},
		{"nested list", `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"}}]}]}`, []string{"/n"}, false},
		{"wrong version is skipped", "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: a}\n", nil, false},
		{"no kind", "metadata: {name: a}\n", nil, true},
		{"not a mapping", "- a\n- b\n", nil, true},
		{"bad field type", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: 80}\n", nil, true},
		{"namespaced node", "apiVersion: v1\nkind: Node\nmetadata: {name: n, namespace: x}\n", nil, true},
		{"bad list item", `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{}}]}`, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			writeFile(t, dir, "f.yaml", c.content)
			objects, err := decodeFile(filepath.Join(dir, "f.yaml"))
			if (err != nil) != c.wantErr {
				t.Fatalf("decodeFile error = %v, want error %v", err, c.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "f.yaml") {
				t.Errorf("error %q does not name the file", err)
			}
			var got []string
			for _, obj := range objects {
				m := obj.(metaObject)
				got = append(got, m.GetNamespace()+"/"+m.GetName())
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("decoded %v, want %v", got, c.want)
			}
		})
	}
}

func TestRunFilesFollowsDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webYAML)
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- RunFiles(ctx, dir, rec) }()

	events := rec.waitFor(t, "all synced", allSynced)
	want := []string{"add Service default/web", "add EndpointSlice default/web-1", "synced Service", "synced EndpointSlice", "synced Node"}
	if got := names(events); !slices.Equal(got, want) {
		t.Fatalf("initial events = %v, want %v", got, want)
	}
	rec.take()

	writeFile(t, dir, "web.yaml", strings.Replace(webYAML, "clusterIP: 10.0.0.1", "clusterIP: 10.0.0.7", 1))
	events = rec.waitForEvent(t, "update Service default/web")
	if got, want := names(events), []string{"update Service default/web"}; !slices.Equal(got, want) {
		t.Fatalf("events after edit = %v, want %v", got, want)
	}
	rec.take()

	writeFile(t, dir, "db.json", listJSON)
	rec.waitFor(t, "adds from db.json", func(events []recordedEvent) bool {
		got := names(events)
		return slices.Contains(got, "add Service apps/db") && slices.Contains(got, "add Node node-a")
	})
	rec.take()

	removeFile(t, dir, "web.yaml")
	rec.waitFor(t, "deletes from web.yaml", func(events []recordedEvent) bool {
		got := names(events)
		return slices.Contains(got, "delete Service default/web") && slices.Contains(got, "delete EndpointSlice default/web-1")
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunFiles returned %v after cancel, want nil", err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("RunFiles did not return after cancel")
	}
}

func TestRunFilesMissingDirectory(t *testing.T) {
	err := RunFiles(context.Background(), filepath.Join(t.TempDir(), "missing"), newRecorder())
	if err == nil {
		t.Fatalf("RunFiles on a missing directory returned nil")
	}
}
