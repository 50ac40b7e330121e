package conntrack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// encodeTuple builds a nested CTA_TUPLE_* attribute as the kernel dumps it.
func encodeTuple(attrType int, protocol uint8, src, dst netip.AddrPort) *nl.RtAttr {
	srcType, dstType := nl.CTA_IP_V4_SRC, nl.CTA_IP_V4_DST
	if src.Addr().Is6() {
		srcType, dstType = nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
	}
	port := func(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }
	tuple := nl.NewRtAttr(unix.NLA_F_NESTED|attrType, nil)
	ip := nl.NewRtAttrChild(tuple, unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
	nl.NewRtAttrChild(ip, srcType, src.Addr().AsSlice())
	nl.NewRtAttrChild(ip, dstType, dst.Addr().AsSlice())
	proto := nl.NewRtAttrChild(tuple, unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	nl.NewRtAttrChild(proto, nl.CTA_PROTO_NUM, []byte{protocol})
	nl.NewRtAttrChild(proto, nl.CTA_PROTO_SRC_PORT, port(src.Port()))
	nl.NewRtAttrChild(proto, nl.CTA_PROTO_DST_PORT, port(dst.Port()))
	return tuple
}

func encodeMessage(family uint8, protocol uint8, origSrc, origDst, replySrc, replyDst string) []byte {
	msg := []byte{family, nl.NFNETLINK_V0, 0, 0}
	msg = append(msg, encodeTuple(nl.CTA_TUPLE_ORIG, protocol,
		netip.MustParseAddrPort(origSrc), netip.MustParseAddrPort(origDst)).Serialize()...)
	msg = append(msg, encodeTuple(nl.CTA_TUPLE_REPLY, protocol,
		netip.MustParseAddrPort(replySrc), netip.MustParseAddrPort(replyDst)).Serialize()...)
	msg = append(msg, nl.NewRtAttr(nl.CTA_TIMEOUT, nl.BEUint32Attr(30)).Serialize()...)
	return msg
}

func TestDecodeConntrackMessageSCTPPorts(t *testing.T) {
	msg := encodeMessage(unix.AF_INET, unix.IPPROTO_SCTP, "10.0.0.1:3001", "10.96.0.50:7000", "10.244.5.5:7000", "10.0.0.1:3001")
	flow, err := decodeConntrackMessage(msg)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if flow.FamilyType != unix.AF_INET || flow.Forward.Protocol != unix.IPPROTO_SCTP ||
		flow.Forward.SrcIP.String() != "10.0.0.1" || flow.Forward.SrcPort != 3001 ||
		flow.Forward.DstIP.String() != "10.96.0.50" || flow.Forward.DstPort != 7000 ||
		flow.Reverse.SrcIP.String() != "10.244.5.5" || flow.Reverse.SrcPort != 7000 ||
		flow.Reverse.DstPort != 3001 {
		t.Errorf("decoded %+v", flow)
	}
}

func TestDecodeConntrackMessageIPv6(t *testing.T) {
	msg := encodeMessage(unix.AF_INET6, unix.IPPROTO_UDP, "[fd00::1]:2001", "[fd00:96::10]:53", "[fd00:244::5]:53", "[fd00::1]:2001")
	flow, err := decodeConntrackMessage(msg)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if flow.Forward.DstIP.String() != "fd00:96::10" || flow.Reverse.SrcIP.String() != "fd00:244::5" || flow.Forward.DstPort != 53 {
		t.Errorf("decoded %+v", flow)
	}
}

func TestDecodeConntrackMessageRejectsMalformed(t *testing.T) {
	good := encodeMessage(unix.AF_INET, unix.IPPROTO_UDP, "10.0.0.1:1", "10.96.0.10:53", "10.244.1.5:53", "10.0.0.1:1")
	badLength := append([]byte(nil), good...)
	binary.NativeEndian.PutUint16(badLength[4:6], 0xffff) // first attribute claims more than the message
	cases := map[string][]byte{
		"shorter than the header": {2, 0},
		"truncated attribute":     good[:len(good)-3],
		"attribute too long":      badLength,
		"half an attribute":       append(append([]byte(nil), good[:4]...), 8, 0),
	}
	for name, msg := range cases {
		if _, err := decodeConntrackMessage(msg); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}
