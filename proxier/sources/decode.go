package sources

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"
)

// maxListDepth bounds how deeply Lists may nest inside Lists.
const maxListDepth = 4

// decodeFile reads path and returns the Service, EndpointSlice and Node objects it defines, in
// file order. Documents of another kind are skipped with a log line; any other problem (an
// unreadable file, bad YAML, an object without a name) fails the whole file.
func decodeFile(path string) ([]runtime.Object, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var objects []runtime.Object
	for i, doc := range splitDocuments(data) {
		decoded, err := decodeDocument(path, doc, 0)
		if err != nil {
			return nil, fmt.Errorf("decoding document %d of %s: %w", i+1, path, err)
		}
		objects = append(objects, decoded...)
	}
	return objects, nil
}

// splitDocuments splits a multi-document YAML stream on lines consisting of "---" alone.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	start := 0
	offset := 0
	for line := range bytes.Lines(data) {
		if string(bytes.TrimRight(line, " \t\r\n")) == "---" {
			docs = append(docs, data[start:offset])
			start = offset + len(line)
		}
		offset += len(line)
	}
	return append(docs, data[start:])
}

// decodeDocument decodes one YAML or JSON document: an object of a known kind, a v1 List of
// them, or nothing (an empty document). depth counts the enclosing Lists.
func decodeDocument(path string, doc []byte, depth int) ([]runtime.Object, error) {
	var typeMeta metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &typeMeta); err != nil {
		return nil, fmt.Errorf("reading apiVersion and kind: %w", err)
	}
	if typeMeta.APIVersion == "" && typeMeta.Kind == "" {
		if isEmptyDocument(doc) {
			return nil, nil
		}
		return nil, fmt.Errorf("document has no apiVersion and kind")
	}
	switch gvk := typeMeta.APIVersion + "/" + typeMeta.Kind; gvk {
	case "v1/List":
		return decodeList(path, doc, depth)
	case "v1/Service":
		return decodeObject(doc, &v1.Service{}, "Service", true)
	case "discovery.k8s.io/v1/EndpointSlice":
		return decodeObject(doc, &discovery.EndpointSlice{}, "EndpointSlice", true)
	case "v1/Node":
		return decodeObject(doc, &v1.Node{}, "Node", false)
	default:
		klog.InfoS("Skipping object of unsupported kind", "file", path, "apiVersion", typeMeta.APIVersion, "kind", typeMeta.Kind)
		return nil, nil
	}
}

// isEmptyDocument reports whether doc holds only comments and whitespace (YAML null).
func isEmptyDocument(doc []byte) bool {
	converted, err := yaml.YAMLToJSON(doc)
	return err == nil && (len(bytes.TrimSpace(converted)) == 0 || string(bytes.TrimSpace(converted)) == "null")
}

// decodeList decodes the items of a v1 List.
func decodeList(path string, doc []byte, depth int) ([]runtime.Object, error) {
	if depth >= maxListDepth {
		return nil, fmt.Errorf("lists nested deeper than %d", maxListDepth)
	}
	var list struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := yaml.Unmarshal(doc, &list); err != nil {
		return nil, fmt.Errorf("decoding List: %w", err)
	}
	var objects []runtime.Object
	for i, item := range list.Items {
		decoded, err := decodeDocument(path, item, depth+1)
		if err != nil {
			return nil, fmt.Errorf("decoding List item %d: %w", i, err)
		}
		objects = append(objects, decoded...)
	}
	return objects, nil
}

// metaObject is a typed API object with object metadata.
type metaObject interface {
	runtime.Object
	metav1.Object
}

// decodeObject decodes doc into obj, checks it has a name, defaults the namespace of namespaced
// kinds to "default" and drops managedFields (as the API source does).
func decodeObject(doc []byte, obj metaObject, kind string, namespaced bool) ([]runtime.Object, error) {
	if err := yaml.Unmarshal(doc, obj); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", kind, err)
	}
	if obj.GetName() == "" {
		return nil, fmt.Errorf("%s has no metadata.name", kind)
	}
	if namespaced && obj.GetNamespace() == "" {
		obj.SetNamespace(metav1.NamespaceDefault)
	}
	if !namespaced && obj.GetNamespace() != "" {
		return nil, fmt.Errorf("%s %q is cluster-scoped but has metadata.namespace %q", kind, obj.GetName(), obj.GetNamespace())
	}
	obj.SetManagedFields(nil)
	return []runtime.Object{obj}, nil
}
