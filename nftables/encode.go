package nftables

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// This file translates rules into netlink expressions exactly as `nft` 1.0 would encode the
// same rule text (same registers, lengths and byte orders); TestEncodingMatchesNFT compares the
// two with `nft --debug=netlink`.

// keyRegister returns the register nft uses for the key component at byte offset off of a
// concatenation: the 16-byte register when off is 16-byte aligned, else the 4-byte register.
func keyRegister(off int) uint32 {
	if off%16 == 0 {
		return uint32(1 + off/16)
	}
	return uint32(unix.NFT_REG32_00 + off/4)
}

// loadKey loads a concatenated key into registers starting at register 1. For lookups in
// interval sets nft converts host-order components to network order; so do we.
func loadKey(f *family, key []keyField, interval bool) []expr.Any {
	var out []expr.Any
	off := 0
	for _, k := range key {
		reg := keyRegister(off)
		switch k.src {
		case srcSaddr, srcDaddr:
			offset := f.daddrOffset
			if k.src == srcSaddr {
				offset = f.saddrOffset
			}
			out = append(out, &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(f.addr.size())})
		case srcL4Proto:
			out = append(out, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg})
			if interval && len(key) > 1 {
				out = append(out, &expr.Byteorder{SourceRegister: reg, DestRegister: reg, Op: expr.ByteorderHton, Len: 1, Size: 2})
			}
		case srcDport:
			out = append(out, &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
		case srcRandom:
			out = append(out, &expr.Numgen{Register: reg, Modulus: k.n, Type: unix.NFT_NG_RANDOM})
		case srcConst:
			out = append(out, &expr.Numgen{Register: reg, Modulus: 1, Type: unix.NFT_NG_INCREMENTAL, Offset: k.n})
		}
		off += k.fieldType(f).padded()
	}
	return out
}

// setInfo tells the encoder about the sets a rule refers to.
type setInfo interface {
	// lookupSet returns the set's ID in the batch (0 if it already exists) and whether it is an
	// interval set.
	lookupSet(name string) (id uint32, interval bool)
}

// encodeRule translates a rule into expressions and user data (the comment).
func encodeRule(f *family, ru rule, sets setInfo) ([]expr.Any, []byte, error) {
	var out []expr.Any
	for _, e := range ru.exprs {
		exprs, err := encodeExpr(f, e, sets)
		if err != nil {
			return nil, nil, fmt.Errorf("encoding %q: %w", e.render(f), err)
		}
		out = append(out, exprs...)
	}
	var udata []byte
	if ru.comment != "" {
		udata = userdata.AppendString(nil, userdata.TypeComment, ru.comment)
	}
	return out, udata, nil
}

// encodeExpr translates one expression.
func encodeExpr(f *family, e ruleExpr, sets setInfo) ([]expr.Any, error) {
	switch e := e.(type) {
	case ctStateNew:
		return testBits(&expr.Ct{Register: 1, Key: expr.CtKeySTATE}, 0x8), nil // NF_CT_STATE_BIT(IP_CT_NEW)
	case ctStatusDNAT:
		return testBits(&expr.Ct{Register: 1, Key: expr.CtKeySTATUS}, 0x20), nil // IPS_DST_NAT
	case markTest:
		return testBits(&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, e.mark), nil
	case fibLocal:
		fib := &expr.Fib{Register: 1, ResultADDRTYPE: true, FlagSADDR: e.saddr, FlagDADDR: !e.saddr}
		return []expr.Any{fib, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)}}, nil
	case addrMatch:
		return encodeAddrMatch(f, e)
	case ifnameMatch:
		return encodeIfname(e), nil
	case setMatch:
		id, interval := sets.lookupSet(e.set)
		return append(loadKey(f, e.key, interval), &expr.Lookup{SourceRegister: 1, SetName: e.set, SetID: id, Invert: e.negate}), nil
	case vmapLookup:
		id, _ := sets.lookupSet(e.set)
		return append(loadKey(f, e.key, false), &expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: e.set, SetID: id}), nil
	case dnatMap:
		return encodeDNATMap(f, e, sets), nil
	case dynUpdate:
		id, _ := sets.lookupSet(e.set)
		return append(loadKey(f, e.key, false), &expr.Dynset{SrcRegKey: 1, SetName: e.set, SetID: id, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: e.timeout}), nil
	case randomZero:
		return []expr.Any{
			&expr.Numgen{Register: 1, Modulus: e.mod, Type: unix.NFT_NG_RANDOM},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
		}, nil
	case markOr:
		return setMark(^e.mark, e.mark), nil
	case markXor:
		return setMark(0xffffffff, e.mark), nil
	case masquerade:
		return []expr.Any{&expr.Masq{FullyRandom: true}}, nil
	case rejectStmt:
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: f.rejectCode}}, nil
	case verdictStmt:
		return encodeVerdict(e.v)
	}
	return nil, fmt.Errorf("no encoding for %T", e)
}

// testBits loads a 32-bit host-order value and matches when any of bits is set.
func testBits(load expr.Any, bits uint32) []expr.Any {
	return []expr.Any{
		load,
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// setMark sets the packet mark to (mark & and) ^ xor.
func setMark(and, xor uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(and), Xor: binaryutil.NativeEndian.PutUint32(xor)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// encodeAddrMatch compares an address with a prefix as nft does: a byte-aligned prefix loads
// only its bytes, any other loads the whole address and masks it.
func encodeAddrMatch(f *family, e addrMatch) ([]expr.Any, error) {
	bits := e.prefix.Bits()
	if bits <= 0 || !f.contains(e.prefix.Addr()) {
		return nil, fmt.Errorf("invalid prefix %s for family %s", e.prefix, f.ipFamily)
	}
	offset := f.daddrOffset
	if e.saddr {
		offset = f.saddrOffset
	}
	op := expr.CmpOpEq
	if e.negate {
		op = expr.CmpOpNeq
	}
	addr := e.prefix.Masked().Addr().AsSlice()
	if bits%8 == 0 {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(bits / 8)},
			&expr.Cmp{Op: op, Register: 1, Data: addr[:bits/8]},
		}, nil
	}
	mask := netip.PrefixFrom(netip.IPv6Unspecified(), bits)
	if f.addr == fieldAddr4 {
		mask = netip.PrefixFrom(netip.IPv4Unspecified(), bits)
	}
	_, last := prefixRange(mask) // all ones below the prefix: invert for the mask
	maskBytes := last.AsSlice()
	for i := range maskBytes {
		maskBytes[i] = ^maskBytes[i]
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(addr))},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: maskBytes, Xor: make([]byte, len(addr))},
		&expr.Cmp{Op: op, Register: 1, Data: addr},
	}, nil
}

// encodeIfname compares the input interface name: a whole name including its terminating
// zeros (16 bytes), or only the bytes of a prefix.
func encodeIfname(e ifnameMatch) []expr.Any {
	data := []byte(e.name)
	if !e.prefix && len(data) < unix.IFNAMSIZ {
		data = append(data, make([]byte, unix.IFNAMSIZ-len(data))...)
	}
	op := expr.CmpOpEq
	if e.negate {
		op = expr.CmpOpNeq
	}
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: data}}
}

// encodeDNATMap looks the key up in a map of `address . port` and DNATs to the result.
func encodeDNATMap(f *family, e dnatMap, sets setInfo) []expr.Any {
	id, _ := sets.lookupSet(e.set)
	nfproto := uint32(unix.NFPROTO_IPV4)
	if f.addr == fieldAddr6 {
		nfproto = unix.NFPROTO_IPV6
	}
	out := loadKey(f, e.key, false)
	return append(out,
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: e.set, SetID: id},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: 1, RegProtoMin: keyRegister(f.addr.padded())},
	)
}

// encodeVerdict translates a verdict.
func encodeVerdict(v verdict) ([]expr.Any, error) {
	kinds := map[verdictKind]expr.VerdictKind{
		verdictJump: expr.VerdictJump, verdictGoto: expr.VerdictGoto, verdictDrop: expr.VerdictDrop,
		verdictAccept: expr.VerdictAccept, verdictReturn: expr.VerdictReturn,
	}
	k, ok := kinds[v.kind]
	if !ok {
		return nil, fmt.Errorf("invalid verdict %d", v.kind)
	}
	return []expr.Any{&expr.Verdict{Kind: k, Chain: v.chain}}, nil
}
