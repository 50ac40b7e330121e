package sources

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// reloadDelay is how long the file source waits after the last change in the directory before
// reloading, so that an editor's burst of writes and renames becomes one reload.
const reloadDelay = 100 * time.Millisecond

// RunFiles feeds h from the *.yaml, *.yml and *.json files directly in dir (no cluster needed).
// A file may hold several YAML documents separated by "---" lines, each a v1 Service, a
// discovery.k8s.io/v1 EndpointSlice, a v1 Node or a v1 List of them; other kinds are skipped
// with a log line. Objects are filtered like RunAPI filters them. After the first load it calls
// OnServiceSynced, OnEndpointSlicesSynced and OnNodeSynced; afterwards it watches dir and, on
// every change, delivers only the difference to what it delivered before. A file that fails to
// parse keeps contributing what it last parsed to; an object defined in several files is taken
// from the lexically first. Handler calls come from a single goroutine. It returns nil when ctx
// is done, or an error when dir cannot be watched.
func RunFiles(ctx context.Context, dir string, h proxier.Provider) error {
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("creating file watcher for %s: %w", dir, err)
	}
	defer func() {
		if err := watcher.Close(); err != nil {
			klog.ErrorS(err, "Closing file watcher", "dir", dir)
		}
	}()
	// Watch before the first load, so no change between the load and the watch is missed.
	if err := watcher.Add(dir); err != nil {
		return fmt.Errorf("watching %s: %w", dir, err)
	}
	source := newFileSource(dir, h)
	source.reload()
	h.OnServiceSynced()
	h.OnEndpointSlicesSynced()
	h.OnNodeSynced()
	return source.watch(ctx, watcher)
}

// fileSource is the state of RunFiles: what each file last parsed to and what was delivered.
type fileSource struct {
	dir            string
	services       kindEvents[*v1.Service]
	endpointSlices kindEvents[*discovery.EndpointSlice]
	nodes          kindEvents[*v1.Node]
	// parsed holds the objects each file (by base name) contributed on its last successful parse.
	parsed map[string][]runtime.Object
	// delivered is the merged, unfiltered object set as of the last reload.
	delivered objectSet
}

// objectSet holds objects of each kind, keyed by namespace/name.
type objectSet struct {
	services       map[string]*v1.Service
	endpointSlices map[string]*discovery.EndpointSlice
	nodes          map[string]*v1.Node
}

func newObjectSet() objectSet {
	return objectSet{
		services:       map[string]*v1.Service{},
		endpointSlices: map[string]*discovery.EndpointSlice{},
		nodes:          map[string]*v1.Node{},
	}
}

func newFileSource(dir string, h proxier.Provider) *fileSource {
	return &fileSource{
		dir:            dir,
		services:       serviceEvents(h),
		endpointSlices: endpointSliceEvents(h),
		// The files describe one node at most (see objectSet.insert), so every Node is this node.
		nodes:     nodeEvents(h, func(*v1.Node) bool { return true }),
		parsed:    map[string][]runtime.Object{},
		delivered: newObjectSet(),
	}
}

// watch reloads after changes in the directory until ctx is done.
func (s *fileSource) watch(ctx context.Context, watcher *fsnotify.Watcher) error {
	debounce := time.NewTimer(reloadDelay)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case event, ok := <-watcher.Events:
			if !ok {
				return fmt.Errorf("watching %s: watcher closed", s.dir)
			}
			if event.Has(fsnotify.Create) || event.Has(fsnotify.Write) || event.Has(fsnotify.Remove) || event.Has(fsnotify.Rename) {
				debounce.Reset(reloadDelay)
			}
		case err, ok := <-watcher.Errors:
			if !ok {
				return fmt.Errorf("watching %s: watcher closed", s.dir)
			}
			// An overflow means lost events: reload to catch up.
			klog.ErrorS(err, "Watching object files; reloading", "dir", s.dir)
			debounce.Reset(reloadDelay)
		case <-debounce.C:
			s.reload()
		}
	}
}

// reload re-reads the directory and delivers the difference to the last reload.
func (s *fileSource) reload() {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		klog.ErrorS(err, "Reading object directory; keeping the previous objects", "dir", s.dir)
		return
	}
	parsed := make(map[string][]runtime.Object, len(entries))
	var names []string // lexical order: os.ReadDir sorts by name
	for _, entry := range entries {
		name := entry.Name()
		if entry.IsDir() || !isObjectFile(name) {
			continue
		}
		objects, err := decodeFile(filepath.Join(s.dir, name))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // removed since the listing
			}
			klog.ErrorS(err, "Parsing object file; keeping the objects it defined before", "file", name)
			objects = s.parsed[name]
		}
		parsed[name] = objects
		names = append(names, name)
	}
	s.parsed = parsed

	merged := newObjectSet()
	for _, name := range names {
		for _, obj := range parsed[name] {
			merged.insert(name, obj)
		}
	}
	s.services.deliverDiff(s.delivered.services, merged.services)
	s.endpointSlices.deliverDiff(s.delivered.endpointSlices, merged.endpointSlices)
	s.nodes.deliverDiff(s.delivered.nodes, merged.nodes)
	s.delivered = merged
}

// isObjectFile reports whether a file name has one of the extensions RunFiles reads.
func isObjectFile(name string) bool {
	switch filepath.Ext(name) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// insert adds obj, read from file, unless an object of the same kind and name is already there
// (the earlier file wins) or, for a Node, another Node is already there (one node only).
// Either case is logged.
func (set objectSet) insert(file string, obj runtime.Object) {
	switch typed := obj.(type) {
	case *v1.Service:
		insertNamed(set.services, file, "Service", typed.Namespace+"/"+typed.Name, typed)
	case *discovery.EndpointSlice:
		insertNamed(set.endpointSlices, file, "EndpointSlice", typed.Namespace+"/"+typed.Name, typed)
	case *v1.Node:
		for existing := range set.nodes {
			if existing != typed.Name {
				klog.InfoS("Ignoring extra Node: the files may describe only this node", "file", file, "node", typed.Name, "kept", existing)
				return
			}
		}
		insertNamed(set.nodes, file, "Node", typed.Name, typed)
	}
}

func insertNamed[T any](objects map[string]T, file, kind, key string, obj T) {
	if _, defined := objects[key]; defined {
		klog.InfoS("Ignoring duplicate object definition; the first one (lexically earliest file) wins", "file", file, "kind", kind, "object", key)
		return
	}
	objects[key] = obj
}
