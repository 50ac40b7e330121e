package app

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// configCodecs holds the strict and lenient codec factories for the
// kube-proxy v1alpha1 configuration API. They decode exactly like upstream's
// (case-sensitive fields; unknown or duplicate fields are strict errors).
type configCodecs struct {
	strict  serializer.CodecFactory
	lenient serializer.CodecFactory
}

// loadCodecs builds the codec factories once.
var loadCodecs = sync.OnceValues(func() (*configCodecs, error) {
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("registering the kube-proxy v1alpha1 config API: %w", err)
	}
	return &configCodecs{
		strict:  serializer.NewCodecFactory(scheme, serializer.EnableStrict),
		lenient: serializer.NewCodecFactory(scheme, serializer.DisableStrict),
	}, nil
})

// loadConfigFile reads a KubeProxyConfiguration file (YAML or JSON) and
// returns it decoded and defaulted.
func loadConfigFile(path string) (*v1alpha1.KubeProxyConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config file: %w", err)
	}
	cfg, err := decodeConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return cfg, nil
}

// decodeConfig decodes a serialized KubeProxyConfiguration. Strict decoding is
// tried first; if it fails only because of strictness (unknown or duplicate
// fields), the data is decoded leniently and a warning is logged, as upstream.
// The result is defaulted.
func decodeConfig(data []byte) (*v1alpha1.KubeProxyConfiguration, error) {
	if err := checkTypeMeta(data); err != nil {
		return nil, err
	}
	codecs, err := loadCodecs()
	if err != nil {
		return nil, err
	}
	obj, _, err := codecs.strict.UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		if !runtime.IsStrictDecodingError(err) {
			return nil, fmt.Errorf("decoding: %w", err)
		}
		var lenientErr error
		obj, _, lenientErr = codecs.lenient.UniversalDeserializer().Decode(data, nil, nil)
		if lenientErr != nil {
			return nil, fmt.Errorf("decoding: %w", err)
		}
		klog.InfoS("Using lenient decoding as strict decoding failed", "err", oneLine(err.Error()))
	}
	cfg, ok := obj.(*v1alpha1.KubeProxyConfiguration)
	if !ok {
		return nil, fmt.Errorf("decoding: got unexpected object type %T", obj)
	}
	setDefaults(cfg)
	return cfg, nil
}

// checkTypeMeta rejects data that is not YAML/JSON or that does not declare
// apiVersion kubeproxy.config.k8s.io/v1alpha1 and kind KubeProxyConfiguration,
// with a message naming the offending field.
func checkTypeMeta(data []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(data, &tm); err != nil {
		return fmt.Errorf("malformed YAML/JSON: %w", err)
	}
	// sigs.k8s.io/yaml matches keys case-insensitively; the codec does not,
	// so a wrongly-cased key is caught by the codec below.
	if tm.APIVersion != configAPIVersion {
		return fmt.Errorf("apiVersion: unsupported value %q, want %q", tm.APIVersion, configAPIVersion)
	}
	if tm.Kind != configKind {
		return fmt.Errorf("kind: unsupported value %q, want %q", tm.Kind, configKind)
	}
	return nil
}

// encodeConfig serializes cfg as v1alpha1 YAML (keys sorted, every field
// present), as upstream's --write-config-to does.
func encodeConfig(cfg *v1alpha1.KubeProxyConfiguration) ([]byte, error) {
	codecs, err := loadCodecs()
	if err != nil {
		return nil, err
	}
	info, ok := runtime.SerializerInfoForMediaType(codecs.strict.SupportedMediaTypes(), runtime.ContentTypeYAML)
	if !ok {
		return nil, errors.New("no YAML serializer for the kube-proxy config API")
	}
	out := cfg.DeepCopy()
	out.APIVersion = configAPIVersion
	out.Kind = configKind
	var buf bytes.Buffer
	if err := info.Serializer.Encode(out, &buf); err != nil {
		return nil, fmt.Errorf("encoding the configuration: %w", err)
	}
	return buf.Bytes(), nil
}

// writeConfigFile writes cfg as v1alpha1 YAML to path.
func writeConfigFile(path string, cfg *v1alpha1.KubeProxyConfiguration) error {
	data, err := encodeConfig(cfg)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("writing config file: %w", err)
	}
	klog.InfoS("Wrote configuration", "file", path)
	return nil
}

// oneLine collapses newlines (and the indentation after them) so that an
// error always prints on a single line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i, f := range fields {
		fields[i] = strings.TrimSpace(f)
	}
	return strings.Join(fields, " ")
}
