package sources

import (
	"encoding/binary"
	"errors"
	"fmt"

	discovery "k8s.io/api/discovery/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// Most of a listed Service or EndpointSlice is what the proxy never reads: its managedFields
// (the largest part of a small object), owner references, annotations, timestamps, and for
// endpoints their target references and hostnames. Decoding them costs allocations, and the
// collector's work for them, on the cold start's critical path. A lean filter rewrites an
// item's protobuf encoding without those fields before the generated Unmarshal decodes it;
// the decoded object is the same as a whole decode followed by clearing them.

// fieldRule says what a lean filter does with one field of a message.
type fieldRule struct {
	// drop removes the field.
	drop bool
	// inner, when set, filters the field's message (each element of a repeated field).
	inner leanFilter
	// mapKeys, when set, keeps only the entries of a map<string, string> field with these keys.
	mapKeys map[string]bool
}

// leanFilter maps field numbers of one message to their rules; fields without a rule are kept
// as they are.
type leanFilter map[uint64]fieldRule

// objectMetaFilter keeps of an ObjectMeta its name, namespace, uid, resourceVersion,
// deletionTimestamp and labels, and the annotations with the given keys.
func objectMetaFilter(annotations ...string) leanFilter {
	keys := map[string]bool{}
	for _, k := range annotations {
		keys[k] = true
	}
	return leanFilter{
		2:  {drop: true}, // generateName
		4:  {drop: true}, // selfLink
		7:  {drop: true}, // generation
		8:  {drop: true}, // creationTimestamp
		10: {drop: true}, // deletionGracePeriodSeconds
		12: {mapKeys: keys},
		13: {drop: true}, // ownerReferences
		14: {drop: true}, // finalizers
		17: {drop: true}, // managedFields
	}
}

// serviceFilter is the lean filter of a Service: its metadata without annotations, its spec,
// and of its status the load balancer's ingress (conditions dropped).
var serviceFilter = leanFilter{
	1: {inner: objectMetaFilter()},
	3: {inner: leanFilter{2: {drop: true}}}, // status.conditions
}

// endpointSliceFilter is the lean filter of an EndpointSlice: its metadata with only the
// trigger-time annotation, and its endpoints without targetRef, hostname and
// deprecatedTopology.
var endpointSliceFilter = leanFilter{
	1: {inner: objectMetaFilter(proxier.TriggerTimeAnnotation)},
	2: {inner: leanFilter{
		3: {drop: true}, // hostname
		4: {drop: true}, // targetRef
		5: {drop: true}, // deprecatedTopology
	}},
}

// leanScratch holds the buffers a filter reuses from item to item, one per nesting level.
type leanScratch struct{ levels [][]byte }

// level returns the emptied buffer of nesting level depth.
func (s *leanScratch) level(depth int) []byte {
	for len(s.levels) <= depth {
		s.levels = append(s.levels, nil)
	}
	return s.levels[depth][:0]
}

// keep stores the (possibly grown) buffer of nesting level depth for reuse.
func (s *leanScratch) keep(depth int, buf []byte) { s.levels[depth] = buf }

// filter appends to dst the message msg without what f drops and returns dst. A malformed
// message is an error.
func (f leanFilter) filter(dst, msg []byte, scratch *leanScratch, depth int) ([]byte, error) {
	for len(msg) > 0 {
		tag, n := binary.Uvarint(msg)
		if n <= 0 {
			return dst, errors.New("malformed field tag")
		}
		num, wire := tag>>3, int(tag&7)
		size, err := fieldSize(msg[n:], wire)
		if err != nil {
			return dst, fmt.Errorf("field %d: %w", num, err)
		}
		whole, value := msg[:n+size], msg[n:n+size]
		msg = msg[n+size:]
		rule, ruled := f[num]
		switch {
		case !ruled || wire != wireBytes && !rule.drop:
			dst = append(dst, whole...)
		case rule.drop:
		case rule.mapKeys != nil:
			if key, err := mapEntryKey(payload(value)); err != nil {
				return dst, fmt.Errorf("field %d: %w", num, err)
			} else if rule.mapKeys[string(key)] {
				dst = append(dst, whole...)
			}
		default:
			inner, err := rule.inner.filter(scratch.level(depth), payload(value), scratch, depth+1)
			if err != nil {
				return dst, fmt.Errorf("field %d: %w", num, err)
			}
			scratch.keep(depth, inner)
			dst = binary.AppendUvarint(append(dst, whole[:n]...), uint64(len(inner)))
			dst = append(dst, inner...)
		}
	}
	return dst, nil
}

// fieldSize returns how many bytes of b (which follows a field's tag) the field's value takes.
func fieldSize(b []byte, wire int) (int, error) {
	var size int
	switch wire {
	case wireVarint:
		_, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, errors.New("malformed varint")
		}
		size = n
	case wireFixed64:
		size = 8
	case wireFixed32:
		size = 4
	case wireBytes:
		length, n := binary.Uvarint(b)
		if n <= 0 || length > uint64(len(b)-n) {
			return 0, errors.New("length-delimited field longer than its message")
		}
		size = n + int(length)
	default:
		return 0, fmt.Errorf("unsupported protobuf wire type %d", wire)
	}
	if size > len(b) {
		return 0, errors.New("field longer than its message")
	}
	return size, nil
}

// payload returns the bytes of a length-delimited value (fieldSize checked it).
func payload(value []byte) []byte {
	_, n := binary.Uvarint(value)
	return value[n:]
}

// mapEntryKey returns the key (field 1) of a map entry message.
func mapEntryKey(entry []byte) ([]byte, error) {
	for len(entry) > 0 {
		tag, n := binary.Uvarint(entry)
		if n <= 0 {
			return nil, errors.New("malformed map entry")
		}
		size, err := fieldSize(entry[n:], int(tag&7))
		if err != nil {
			return nil, err
		}
		if tag == 1<<3|wireBytes {
			return payload(entry[n : n+size]), nil
		}
		entry = entry[n+size:]
	}
	return nil, nil
}

// newEndpointSlice returns an EndpointSlice to decode encoded into, its endpoint list sized for
// the endpoints encoded holds: decoding appends each endpoint, and growing the list from
// nothing allocated three times the memory the endpoints need.
func newEndpointSlice(encoded []byte) *discovery.EndpointSlice {
	const endpointsField = 2
	n := 0
	for len(encoded) > 0 {
		tag, k := binary.Uvarint(encoded)
		if k <= 0 {
			break
		}
		size, err := fieldSize(encoded[k:], int(tag&7))
		if err != nil {
			break // Unmarshal reports it
		}
		if tag>>3 == endpointsField {
			n++
		}
		encoded = encoded[k+size:]
	}
	if n == 0 {
		return &discovery.EndpointSlice{}
	}
	return &discovery.EndpointSlice{Endpoints: make([]discovery.Endpoint, 0, n)}
}
