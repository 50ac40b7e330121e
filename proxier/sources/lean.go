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
		fld, err := nextField(msg)
		if err != nil {
			return dst, err
		}
		msg = msg[len(fld.whole):]
		rule, ruled := f[fld.num]
		switch {
		case !ruled || fld.wire != wireBytes && !rule.drop:
			dst = append(dst, fld.whole...)
		case rule.drop:
		case rule.mapKeys != nil:
			if key, err := mapEntryKey(fld.payload()); err != nil {
				return dst, fmt.Errorf("field %d: %w", fld.num, err)
			} else if rule.mapKeys[string(key)] {
				dst = append(dst, fld.whole...)
			}
		default:
			inner, err := rule.inner.filter(scratch.level(depth), fld.payload(), scratch, depth+1)
			if err != nil {
				return dst, fmt.Errorf("field %d: %w", fld.num, err)
			}
			scratch.keep(depth, inner)
			dst = binary.AppendUvarint(append(dst, fld.whole[:fld.tagSize]...), uint64(len(inner)))
			dst = append(dst, inner...)
		}
	}
	return dst, nil
}

// field is one encoded field of a message.
type field struct {
	num  uint64
	wire int
	// whole is the field's encoding, its tag (tagSize bytes) then its value.
	whole   []byte
	tagSize int
}

// payload returns the bytes of a length-delimited field's value (nextField checked its length).
func (f field) payload() []byte {
	_, n := binary.Uvarint(f.whole[f.tagSize:])
	return f.whole[f.tagSize+n:]
}

// nextField returns the first field of msg (which must not be empty).
func nextField(msg []byte) (field, error) {
	tag, n := binary.Uvarint(msg)
	if n <= 0 {
		return field{}, errors.New("malformed field tag")
	}
	f := field{num: tag >> 3, wire: int(tag & 7), tagSize: n}
	size, err := fieldSize(msg[n:], f.wire)
	if err != nil {
		return field{}, fmt.Errorf("field %d: %w", f.num, err)
	}
	f.whole = msg[:n+size]
	return f, nil
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

// mapEntryKey returns the key (field 1) of a map entry message.
func mapEntryKey(entry []byte) ([]byte, error) {
	for len(entry) > 0 {
		fld, err := nextField(entry)
		if err != nil {
			return nil, err
		}
		if fld.num == 1 && fld.wire == wireBytes {
			return fld.payload(), nil
		}
		entry = entry[len(fld.whole):]
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
		fld, err := nextField(encoded)
		if err != nil {
			break // Unmarshal reports it
		}
		if fld.num == endpointsField {
			n++
		}
		encoded = encoded[len(fld.whole):]
	}
	if n == 0 {
		return &discovery.EndpointSlice{}
	}
	return &discovery.EndpointSlice{Endpoints: make([]discovery.Endpoint, 0, n)}
}
