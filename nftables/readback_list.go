package nftables

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// listedRule is one rule as listed by the kernel.
type listedRule struct {
	exprs []expr.Any
	udata []byte
}

// listRules lists the rules of the family's table, per chain in order. google/nftables skips
// the expressions it cannot parse (byteorder among them), which would hide foreign
// expressions; this listing keeps every one, as *opaqueExpr when it is not one nodeproxy uses.
func listRules(netNSFd int, fam *family) (map[string][]listedRule, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netNSFd})
	if err != nil {
		return nil, fmt.Errorf("opening netfilter netlink connection: %w", err)
	}
	defer func() { _ = conn.Close() }()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")}})
	if err != nil {
		return nil, fmt.Errorf("encoding rule listing request: %w", err)
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{byte(fam.table), unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("listing rules: %w", err)
	}
	out := map[string][]listedRule{}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		table, chain, lr, err := parseRuleMessage(byte(fam.table), m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("decoding rule listing: %w", err)
		}
		if table == TableName {
			out[chain] = append(out[chain], lr)
		}
	}
	return out, nil
}

// parseRuleMessage decodes one NFT_MSG_NEWRULE message's attributes.
func parseRuleMessage(fam byte, b []byte) (table, chain string, lr listedRule, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", "", lr, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_TABLE:
			table = ad.String()
		case unix.NFTA_RULE_CHAIN:
			chain = ad.String()
		case unix.NFTA_RULE_USERDATA:
			lr.udata = ad.Bytes()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					e, err := parseListedExpr(fam, nad.Bytes())
					if err != nil {
						return err
					}
					lr.exprs = append(lr.exprs, e)
				}
				return nil
			})
		}
	}
	return table, chain, lr, ad.Err()
}

// opaqueExpr is an expression nodeproxy never writes: no rule holding one is recognised.
type opaqueExpr struct {
	expr.Any
	name string
}

// parseListedExpr decodes one expression (NFTA_EXPR_NAME and NFTA_EXPR_DATA).
func parseListedExpr(fam byte, b []byte) (expr.Any, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	var name string
	var data []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			data = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	if name == "byteorder" {
		return parseByteorder(data)
	}
	kinds := map[string]func() expr.Any{
		"payload": func() expr.Any { return &expr.Payload{} }, "meta": func() expr.Any { return &expr.Meta{} },
		"ct": func() expr.Any { return &expr.Ct{} }, "cmp": func() expr.Any { return &expr.Cmp{} },
		"bitwise": func() expr.Any { return &expr.Bitwise{} }, "lookup": func() expr.Any { return &expr.Lookup{} },
		"dynset": func() expr.Any { return &expr.Dynset{} }, "nat": func() expr.Any { return &expr.NAT{} },
		"masq": func() expr.Any { return &expr.Masq{} }, "reject": func() expr.Any { return &expr.Reject{} },
		"numgen": func() expr.Any { return &expr.Numgen{} }, "fib": func() expr.Any { return &expr.Fib{} },
		"immediate": func() expr.Any { return &expr.Immediate{} },
	}
	mk, ok := kinds[name]
	if !ok {
		return &opaqueExpr{name: name}, nil
	}
	e := mk()
	if err := expr.Unmarshal(fam, data, e); err != nil {
		return nil, fmt.Errorf("decoding %s expression: %w", name, err)
	}
	if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
		e = &expr.Verdict{} // a verdict is an immediate into the verdict register
		if err := expr.Unmarshal(fam, data, e); err != nil {
			return nil, fmt.Errorf("decoding verdict: %w", err)
		}
	}
	return e, nil
}

// parseByteorder decodes a byteorder expression (google/nftables cannot).
func parseByteorder(b []byte) (expr.Any, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	e := &expr.Byteorder{}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_BYTEORDER_SREG:
			e.SourceRegister = ad.Uint32()
		case unix.NFTA_BYTEORDER_DREG:
			e.DestRegister = ad.Uint32()
		case unix.NFTA_BYTEORDER_OP:
			e.Op = expr.ByteorderOp(ad.Uint32())
		case unix.NFTA_BYTEORDER_LEN:
			e.Len = ad.Uint32()
		case unix.NFTA_BYTEORDER_SIZE:
			e.Size = ad.Uint32()
		}
	}
	return e, ad.Err()
}
