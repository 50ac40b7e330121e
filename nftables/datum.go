package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	gnft "github.com/google/nftables"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// fieldType is the type of one component of a set key or map value. Keys and values are kept
// exactly as the kernel stores them (each component padded to 4 bytes, as in a concatenation),
// so that the committed state, the fake, the tracer and the netlink encoder share one form.
type fieldType uint8

const (
	fieldAddr4 fieldType = iota + 1 // ipv4_addr, network order
	fieldAddr6                      // ipv6_addr, network order
	fieldProto                      // inet_proto, one byte
	fieldPort                       // inet_service, network order
	fieldSlot                       // integer, host order: the endpoint index numgen produces
)

// size is the component's length without padding.
func (t fieldType) size() int {
	switch t {
	case fieldAddr4, fieldSlot:
		return 4
	case fieldAddr6:
		return 16
	case fieldProto:
		return 1
	case fieldPort:
		return 2
	}
	return 0
}

// padded is the component's length in a concatenation (a multiple of 4 bytes).
func (t fieldType) padded() int { return (t.size() + 3) &^ 3 }

// datatype is the component's nft datatype, which makes `nft list` print it readably. The slot
// is declared as a mark: it has the size and byte order of the numgen output it is compared
// with, and, unlike a plain integer in a concatenation, nft can print it.
func (t fieldType) datatype() gnft.SetDatatype {
	switch t {
	case fieldAddr4:
		return gnft.TypeIPAddr
	case fieldAddr6:
		return gnft.TypeIP6Addr
	case fieldProto:
		return gnft.TypeInetProto
	case fieldPort:
		return gnft.TypeInetService
	}
	return gnft.TypeMark
}

// keyLen is the length of a concatenation of types.
func keyLen(types []fieldType) int {
	n := 0
	for _, t := range types {
		n += t.padded()
	}
	return n
}

// protoNumber is the IP protocol number of a Service protocol (0 if unknown).
func protoNumber(p v1.Protocol) uint8 {
	switch p {
	case v1.ProtocolTCP:
		return unix.IPPROTO_TCP
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP
	}
	return 0
}

// protoName is how nft prints an IP protocol number.
func protoName(n uint8) string {
	switch n {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return strconv.Itoa(int(n))
}

// keyBuf builds an encoded key or value, one component at a time.
type keyBuf []byte

// addr appends an address (4 or 16 bytes).
func (k keyBuf) addr(ip netip.Addr) keyBuf {
	ip = ip.Unmap()
	if ip.Is4() {
		b := ip.As4()
		return append(k, b[:]...)
	}
	b := ip.As16()
	return append(k, b[:]...)
}

// proto appends an IP protocol number.
func (k keyBuf) proto(n uint8) keyBuf { return append(k, n, 0, 0, 0) }

// port appends a port number.
func (k keyBuf) port(p uint16) keyBuf { return append(k, byte(p>>8), byte(p), 0, 0) }

// slot appends an endpoint index in host byte order, as numgen writes it.
func (k keyBuf) slot(i uint32) keyBuf { return binary.NativeEndian.AppendUint32(k, i) }

// String returns the encoded bytes as a string (the form elements are stored in).
func (k keyBuf) String() string { return string(k) }

// formatData renders an encoded concatenation the way `nft list` prints it ("a . b . c").
func formatData(types []fieldType, data string) string {
	parts := make([]string, 0, len(types))
	for _, t := range types {
		if len(data) < t.padded() {
			parts = append(parts, "?")
			break
		}
		parts = append(parts, formatField(t, data[:t.size()]))
		data = data[t.padded():]
	}
	return strings.Join(parts, " . ")
}

// formatRange renders an interval element whose last component is a range, as a prefix when
// it is one ("a . b . 10.0.0.0/8").
func formatRange(types []fieldType, start, end string) string {
	if len(types) == 0 || len(start) != keyLen(types) || len(end) != len(start) {
		return "?"
	}
	last := types[len(types)-1]
	head := len(start) - last.padded()
	lo, _ := netip.AddrFromSlice([]byte(start[head : head+last.size()]))
	hi, _ := netip.AddrFromSlice([]byte(end[head : head+last.size()]))
	rng := lo.String() + "-" + hi.String()
	if pfx, ok := rangeToPrefix(lo, hi); ok {
		rng = pfx.String()
		if pfx.IsSingleIP() {
			rng = lo.String()
		}
	}
	if len(types) == 1 {
		return rng
	}
	return formatData(types[:len(types)-1], start[:head]) + " . " + rng
}

// formatField renders one component.
func formatField(t fieldType, b string) string {
	switch t {
	case fieldAddr4, fieldAddr6:
		ip, _ := netip.AddrFromSlice([]byte(b))
		return ip.String()
	case fieldProto:
		return protoName(b[0])
	case fieldPort:
		return strconv.Itoa(int(binary.BigEndian.Uint16([]byte(b))))
	case fieldSlot:
		return strconv.FormatUint(uint64(binary.NativeEndian.Uint32([]byte(b))), 10)
	}
	return fmt.Sprintf("%x", b)
}

// prefixRange returns the first and last address of a prefix.
func prefixRange(p netip.Prefix) (first, last netip.Addr) {
	p = p.Masked()
	first = p.Addr()
	b := first.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - uint(i%8))
	}
	last, _ = netip.AddrFromSlice(b)
	return first, last
}

// rangeToPrefix returns the prefix covering exactly lo..hi, if there is one.
func rangeToPrefix(lo, hi netip.Addr) (netip.Prefix, bool) {
	for bits := 0; bits <= lo.BitLen(); bits++ {
		p := netip.PrefixFrom(lo, bits)
		if p.Masked().Addr() != lo {
			continue
		}
		if _, last := prefixRange(p); last == hi {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
