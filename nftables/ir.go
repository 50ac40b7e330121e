package nftables

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// This file is the small rule language the backend speaks: every rule nodeproxy programs is a
// list of these expressions. The same values are rendered as nft text (Fake.Dump, logs),
// encoded into netlink expressions (encode.go) and evaluated by the packet tracer (trace.go),
// so the three can never disagree about what a rule means.

// source is a packet property (or generated number) that becomes one component of a lookup key.
type source uint8

const (
	srcSaddr   source = iota + 1 // ip saddr
	srcDaddr                     // ip daddr
	srcL4Proto                   // meta l4proto
	srcDport                     // th dport
	srcRandom                    // numgen random mod n
	srcConst                     // numgen inc mod 1 offset n: the constant n
)

// keyField is one component of a concatenated lookup key.
type keyField struct {
	src source
	n   uint32
}

var (
	kSaddr   = keyField{src: srcSaddr}
	kDaddr   = keyField{src: srcDaddr}
	kL4Proto = keyField{src: srcL4Proto}
	kDport   = keyField{src: srcDport}
)

// kRandom is a random number in [0, n).
func kRandom(n int) keyField { return keyField{src: srcRandom, n: uint32(n)} }

// kConst is the constant n (as numgen writes it, so it can sit in a concatenation).
func kConst(n int) keyField { return keyField{src: srcConst, n: uint32(n)} }

// fieldType is the component type the key field produces.
func (k keyField) fieldType(f *family) fieldType {
	switch k.src {
	case srcSaddr, srcDaddr:
		return f.addr
	case srcL4Proto:
		return fieldProto
	case srcDport:
		return fieldPort
	}
	return fieldSlot
}

func (k keyField) render(f *family) string {
	switch k.src {
	case srcSaddr:
		return f.kw + " saddr"
	case srcDaddr:
		return f.kw + " daddr"
	case srcL4Proto:
		return "meta l4proto"
	case srcDport:
		return "th dport"
	case srcRandom:
		return fmt.Sprintf("numgen random mod %d", k.n)
	}
	if k.n == 0 {
		return "numgen inc mod 1" // as nft prints it
	}
	return fmt.Sprintf("numgen inc mod 1 offset %d", k.n)
}

func renderKey(f *family, key []keyField) string {
	parts := make([]string, len(key))
	for i, k := range key {
		parts[i] = k.render(f)
	}
	return strings.Join(parts, " . ")
}

// ruleExpr is one match, statement or verdict of a rule.
type ruleExpr interface {
	render(f *family) string
}

type (
	// ctStateNew matches the first packet of a connection.
	ctStateNew struct{}
	// ctStatusDNAT matches connections that were DNATed.
	ctStatusDNAT struct{}
	// fibLocal matches when the source (or destination) address is local to the node.
	fibLocal struct{ saddr bool }
	// addrMatch compares the source or destination address with a prefix.
	addrMatch struct {
		saddr  bool
		prefix netip.Prefix
		negate bool
	}
	// ifnameMatch compares the input interface name (prefix: name is a prefix, "veth*").
	ifnameMatch struct {
		name           string
		prefix, negate bool
	}
	// markTest matches packets carrying the mark bits.
	markTest struct{ mark uint32 }
	// setMatch looks the key up in a named set.
	setMatch struct {
		key    []keyField
		set    string
		negate bool
	}
	// markOr sets mark bits; markXor flips them.
	markOr  struct{ mark uint32 }
	markXor struct{ mark uint32 }
	// masquerade SNATs to the outgoing interface address with a fully random port.
	masquerade struct{}
	// dnatMap DNATs to the address and port the key maps to in set (no element: no match).
	dnatMap struct {
		key []keyField
		set string
	}
	// vmapLookup runs the verdict the key maps to in set (no element: no match).
	vmapLookup struct {
		key []keyField
		set string
	}
	// randomZero matches with probability 1/mod (a fresh random number in [0, mod) is 0).
	randomZero struct{ mod uint32 }
	// dynUpdate adds the key to a dynamic set, or refreshes its timeout.
	dynUpdate struct {
		key     []keyField
		set     string
		timeout time.Duration
	}
	// rejectStmt rejects with ICMP port unreachable.
	rejectStmt struct{}
	// verdictStmt is a plain verdict (jump, goto, drop, accept, return).
	verdictStmt struct{ v verdict }
)

func (ctStateNew) render(*family) string   { return "ct state new" }
func (ctStatusDNAT) render(*family) string { return "ct status dnat" }
func (e fibLocal) render(*family) string {
	if e.saddr {
		return "fib saddr type local"
	}
	return "fib daddr type local"
}
func (e addrMatch) render(f *family) string {
	k := kDaddr
	if e.saddr {
		k = kSaddr
	}
	op := ""
	if e.negate {
		op = "!= "
	}
	p := e.prefix.String()
	if e.prefix.IsSingleIP() {
		p = e.prefix.Addr().String()
	}
	return fmt.Sprintf("%s %s%s", k.render(f), op, p)
}
func (e ifnameMatch) render(*family) string {
	op, name := "", e.name
	if e.negate {
		op = "!= "
	}
	if e.prefix {
		name += "*"
	}
	return fmt.Sprintf("iifname %s%q", op, name)
}
func (e markTest) render(*family) string {
	return fmt.Sprintf("meta mark & 0x%08x != 0x00000000", e.mark)
}
func (e setMatch) render(f *family) string {
	op := ""
	if e.negate {
		op = "!= "
	}
	return fmt.Sprintf("%s %s@%s", renderKey(f, e.key), op, e.set)
}
func (e markOr) render(*family) string {
	return fmt.Sprintf("meta mark set meta mark | 0x%08x", e.mark)
}
func (e markXor) render(*family) string {
	return fmt.Sprintf("meta mark set meta mark ^ 0x%08x", e.mark)
}
func (masquerade) render(*family) string { return "masquerade fully-random" }
func (e dnatMap) render(f *family) string {
	return fmt.Sprintf("dnat %s to %s map @%s", f.kw, renderKey(f, e.key), e.set)
}
func (e vmapLookup) render(f *family) string {
	return fmt.Sprintf("%s vmap @%s", renderKey(f, e.key), e.set)
}
func (e randomZero) render(*family) string { return fmt.Sprintf("numgen random mod %d 0", e.mod) }
func (e dynUpdate) render(f *family) string {
	return fmt.Sprintf("update @%s { %s timeout %s }", e.set, renderKey(f, e.key), nftDuration(e.timeout))
}
func (rejectStmt) render(*family) string    { return "reject" }
func (e verdictStmt) render(*family) string { return e.v.String() }

// nftDuration formats a duration as nft prints timeouts ("3h", "1m30s").
func nftDuration(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	var b strings.Builder
	units := []struct {
		d    time.Duration
		unit string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}, {time.Millisecond, "ms"}}
	for _, u := range units {
		if n := d / u.d; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.unit)
			d -= n * u.d
		}
	}
	return b.String()
}

// verdictKind is what a verdict does.
type verdictKind uint8

const (
	verdictNone verdictKind = iota
	verdictJump
	verdictGoto
	verdictDrop
	verdictAccept
	verdictReturn
)

// verdict is a rule's or a verdict map element's verdict.
type verdict struct {
	kind  verdictKind
	chain string
}

func goTo(chain string) verdict   { return verdict{kind: verdictGoto, chain: chain} }
func jumpTo(chain string) verdict { return verdict{kind: verdictJump, chain: chain} }

var verdictDropV = verdict{kind: verdictDrop}

// String renders the verdict in nft syntax.
func (v verdict) String() string {
	switch v.kind {
	case verdictJump:
		return "jump " + v.chain
	case verdictGoto:
		return "goto " + v.chain
	case verdictDrop:
		return "drop"
	case verdictAccept:
		return "accept"
	case verdictReturn:
		return "return"
	}
	return ""
}

// rule is one rule: its expressions in order and an optional comment.
type rule struct {
	exprs   []ruleExpr
	comment string
}

// r builds a rule from expressions.
func r(exprs ...ruleExpr) rule { return rule{exprs: exprs} }

// withComment returns the rule with a comment.
func (ru rule) withComment(c string) rule { ru.comment = c; return ru }

func (ru rule) render(f *family) string {
	parts := make([]string, 0, len(ru.exprs)+1)
	for _, e := range ru.exprs {
		parts = append(parts, e.render(f))
	}
	if ru.comment != "" {
		parts = append(parts, fmt.Sprintf("comment %q", ru.comment))
	}
	return strings.Join(parts, " ")
}

// baseHook makes a chain a base chain attached to a netfilter hook.
type baseHook struct {
	typ      string // "filter" or "nat"
	hook     string // "prerouting", "input", "forward", "output", "postrouting"
	priority int32
}

// chain is a chain and all its rules (chains are always written whole).
type chain struct {
	name  string
	base  *baseHook
	rules []rule
}

// setSpec declares a set or map.
type setSpec struct {
	name string
	key  []fieldType
	// data are the value components of a data map (nil otherwise).
	data []fieldType
	// verdictMap marks a verdict map.
	verdictMap bool
	// interval allows ranges in the last key component.
	interval bool
	// dynamic marks a set updated from the packet path, with timeouts.
	dynamic bool
	comment string
	// size, when not 0, is the most elements the kernel lets the set hold (see capacity.go).
	size int
}

// element is one set or map element, encoded as the kernel stores it.
type element struct {
	key    string
	keyEnd string // interval sets: the last address of the range
	value  string // data maps
	verd   verdict
	// comment is shown by `nft list`; it is part of the element's identity for updates.
	comment string
}

// equal reports whether two elements carry the same key, value and comment.
func (e element) equal(o element) bool { return e == o }

// renderElement renders an element of spec in nft syntax.
func renderElement(spec *setSpec, e element) string {
	var b strings.Builder
	if spec.interval {
		b.WriteString(formatRange(spec.key, e.key, e.keyEnd))
	} else {
		b.WriteString(formatData(spec.key, e.key))
	}
	if e.comment != "" {
		fmt.Fprintf(&b, " comment %q", e.comment)
	}
	switch {
	case spec.verdictMap:
		b.WriteString(" : " + e.verd.String())
	case spec.data != nil:
		b.WriteString(" : " + formatData(spec.data, e.value))
	}
	return b.String()
}
