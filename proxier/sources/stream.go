package sources

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// A list of 10,000 Services or EndpointSlices is one response of 10–20 MB. client-go reads all
// of it, decodes all of it, and the reflector hands the whole list to the store: at 10,000
// Services x 10 endpoints the decoded lists were the largest thing the proxy ever held, and
// decoding began only after the last byte had arrived. A streamed list instead decodes a
// protobuf response item by item as it arrives and delivers each item to the store at once;
// the reflector gets back an empty list carrying the list's metadata, and the store's Replace
// completes the relist with the keys the stream delivered (deleting the others).

// protobufMagic prefixes every message of Kubernetes' protobuf encoding.
var protobufMagic = []byte{0x6b, 0x38, 0x73, 0x00}

// maxItemBytes bounds one list item (the buffer it is read into); the API server refuses
// objects above 1.5 MiB anyway. The list around the items is not bounded: it is never held.
// A variable for tests.
var maxItemBytes int64 = 64 << 20

// protoItem is an API object that decodes itself from protobuf (every built-in type does).
type protoItem interface {
	runtime.Object
	Unmarshal(data []byte) error
}

// listSink receives the items of a streamed list.
type listSink[T any] interface {
	// beginStreamedList starts a (re)list whose items follow.
	beginStreamedList()
	// abandonStreamedList forgets a list that failed before it was complete.
	abandonStreamedList()
	// listedItem delivers one item of the list.
	listedItem(obj T) error
}

// streamedList lists one resource of every namespace into a sink, item by item.
type streamedList[T protoItem] struct {
	client   *rest.RESTClient
	resource string
	sink     listSink[T]
	// newItem returns an empty item to decode encoded into (sized for it where that saves
	// growing slices while decoding); newList wraps list metadata (and, for a response that is
	// not protobuf, nothing else) into the list object the reflector expects.
	newItem func(encoded []byte) T
	newList func(metav1.ListMeta) runtime.Object
	// lean drops from each item's encoding what the proxy never reads (lean.go).
	lean leanFilter
}

// listFunc lists one page of a resource.
type listFunc func(context.Context, metav1.ListOptions) (runtime.Object, error)

// streamedOr returns a list function streaming resource through rc into sink, or typed (the
// client's own list) when rc is not a real REST client.
func streamedOr[T protoItem](rc rest.Interface, resource string, sink listSink[T], lean leanFilter,
	newItem func(encoded []byte) T, newList func(metav1.ListMeta) runtime.Object, typed listFunc) listFunc {
	client := restClient(rc)
	if client == nil {
		return typed
	}
	l := &streamedList[T]{client: client, resource: resource, sink: sink, newItem: newItem, newList: newList, lean: lean}
	return l.list
}

// restClient returns the concrete REST client behind a typed group client, or nil when there is
// none (fake clientsets), in which case lists are not streamed.
func restClient(rc rest.Interface) *rest.RESTClient {
	concrete, ok := rc.(*rest.RESTClient)
	if !ok || concrete == nil {
		return nil
	}
	return concrete
}

// list performs one list request (one page, if opts asks for pages). A protobuf response is
// streamed into the sink and an item-less list returned; any other response (JSON, when the
// client was configured for it) is decoded whole and returned for the reflector to deliver.
func (l *streamedList[T]) list(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	body, err := l.client.Get().Resource(l.resource).VersionedParams(&opts, scheme.ParameterCodec).Stream(ctx)
	if err != nil {
		if opts.Continue != "" {
			l.sink.abandonStreamedList() // a later page failed: the list is incomplete
		}
		return nil, err // an API status error, as the reflector expects it (Expired, Gone, ...)
	}
	defer func() { _ = body.Close() }()
	in := bufio.NewReaderSize(body, 64<<10)
	if magic, err := in.Peek(len(protobufMagic)); err != nil || !bytes.Equal(magic, protobufMagic) {
		return l.decodeWhole(in)
	}
	if opts.Continue == "" {
		l.sink.beginStreamedList()
	}
	_, _ = in.Discard(len(protobufMagic))
	meta, err := l.readEnvelope(&protoStream{in: in, left: -1})
	if err != nil {
		l.sink.abandonStreamedList()
		return nil, fmt.Errorf("reading the %s list: %w", l.resource, err)
	}
	return l.newList(meta), nil
}

// decodeWhole decodes a non-protobuf list response with the client-go scheme.
func (l *streamedList[T]) decodeWhole(in io.Reader) (runtime.Object, error) {
	data, err := io.ReadAll(in)
	if err != nil {
		return nil, fmt.Errorf("reading the %s list: %w", l.resource, err)
	}
	into := l.newList(metav1.ListMeta{})
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(data, nil, into)
	if err != nil {
		return nil, fmt.Errorf("decoding the %s list: %w", l.resource, err)
	}
	return obj, nil
}

// readEnvelope reads a runtime.Unknown whose raw bytes (field 2) are the list.
func (l *streamedList[T]) readEnvelope(s *protoStream) (metav1.ListMeta, error) {
	var meta metav1.ListMeta
	sawList := false
	for {
		field, wire, err := s.tag()
		if errors.Is(err, io.EOF) {
			if !sawList {
				return meta, errors.New("response holds no list")
			}
			return meta, nil
		}
		if err != nil {
			return meta, err
		}
		if field != 2 || wire != wireBytes {
			if err := s.skip(wire); err != nil {
				return meta, err
			}
			continue
		}
		n, err := s.length()
		if err != nil {
			return meta, err
		}
		if meta, err = l.readList(&protoStream{in: s.in, left: n}); err != nil {
			return meta, err
		}
		s.consumed(n)
		sawList = true
	}
}

// readList reads a list message (field 1 ListMeta, field 2 items) of exactly s.left bytes,
// delivering each item as soon as it is decoded.
func (l *streamedList[T]) readList(s *protoStream) (metav1.ListMeta, error) {
	var meta metav1.ListMeta
	var buf, lean []byte
	var scratch leanScratch
	for s.left > 0 {
		field, wire, err := s.tag()
		if err != nil {
			return meta, unexpectedEOF(err)
		}
		if (field != 1 && field != 2) || wire != wireBytes {
			if err := s.skip(wire); err != nil {
				return meta, err
			}
			continue
		}
		if buf, err = s.message(buf); err != nil {
			return meta, err
		}
		if field == 1 {
			if err := meta.Unmarshal(buf); err != nil {
				return meta, fmt.Errorf("decoding list metadata: %w", err)
			}
			continue
		}
		data := buf
		if l.lean != nil {
			if lean, err = l.lean.filter(lean[:0], buf, &scratch, 0); err != nil {
				return meta, fmt.Errorf("decoding a list item: %w", err)
			}
			data = lean
		}
		item := l.newItem(data)
		if err := item.Unmarshal(data); err != nil { // copies what it keeps: buffers are reused
			return meta, fmt.Errorf("decoding a list item: %w", err)
		}
		if err := l.sink.listedItem(item); err != nil {
			return meta, err
		}
	}
	return meta, nil
}

// Protobuf wire types.
const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
	wireFixed32 = 5
)

// protoStream reads protobuf fields from a stream; left counts the bytes of the current
// message still unread (-1: until EOF).
type protoStream struct {
	in   *bufio.Reader
	left int64
}

// consumed records that n bytes of the message were read by someone else.
func (s *protoStream) consumed(n int64) {
	if s.left >= 0 {
		s.left -= n
	}
}

// varint reads one varint; io.EOF means the stream ended cleanly before it.
func (s *protoStream) varint() (uint64, error) {
	var v uint64
	for i := range binary.MaxVarintLen64 {
		b, err := s.in.ReadByte()
		if err != nil {
			if i > 0 {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, err
		}
		s.consumed(1)
		v |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, errors.New("varint longer than 64 bits")
}

// tag reads a field tag.
func (s *protoStream) tag() (field uint64, wire int, err error) {
	v, err := s.varint()
	if err != nil {
		return 0, 0, err
	}
	return v >> 3, int(v & 7), nil
}

// length reads the length of a length-delimited field and checks it fits the message.
func (s *protoStream) length() (int64, error) {
	v, err := s.varint()
	if err != nil {
		return 0, unexpectedEOF(err)
	}
	if v > math.MaxInt64/2 || (s.left >= 0 && int64(v) > s.left) {
		return 0, fmt.Errorf("field of %d bytes does not fit its message", v)
	}
	return int64(v), nil
}

// message reads a length-delimited field into buf (reused when large enough).
func (s *protoStream) message(buf []byte) ([]byte, error) {
	n, err := s.length()
	if err != nil {
		return buf, err
	}
	if n > maxItemBytes {
		return buf, fmt.Errorf("list item of %d bytes is over the %d-byte limit", n, maxItemBytes)
	}
	if int64(cap(buf)) < n {
		buf = make([]byte, n, n+n/4)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(s.in, buf); err != nil {
		return buf, unexpectedEOF(err)
	}
	s.consumed(n)
	return buf, nil
}

// skip reads past a field of the given wire type.
func (s *protoStream) skip(wire int) error {
	var n int64
	switch wire {
	case wireVarint:
		_, err := s.varint()
		return unexpectedEOF(err)
	case wireFixed64:
		n = 8
	case wireFixed32:
		n = 4
	case wireBytes:
		var err error
		if n, err = s.length(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unsupported protobuf wire type %d", wire)
	}
	if _, err := s.in.Discard(int(n)); err != nil {
		return unexpectedEOF(err)
	}
	s.consumed(n)
	return nil
}

// unexpectedEOF turns a clean EOF in the middle of a field into io.ErrUnexpectedEOF.
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
