package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"reflect"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// This file reads nodeproxy's tables back from the kernel and rebuilds the in-memory state the
// packet tracer evaluates. It is the inverse of encode.go for the rule shapes nodeproxy writes:
// a rule is accepted only when encoding what was decoded gives back exactly the expressions
// the kernel listed, so nothing is guessed. Other rules become unrecognisedRule, which the
// tracer cannot evaluate: a trace through them fails naming the chain.

// Ruleset is nodeproxy's tables as read back from a kernel: the state Trace and Explain
// evaluate. It is safe for concurrent use.
type Ruleset struct {
	fake *Fake
	// unrecognised lists, per family, the chains holding rules this version cannot read.
	unrecognised map[*family][]string
}

// UnrecognisedRuleError is returned when a traced packet meets a rule this version of
// nodeproxy does not recognise (the table was written by another version, or changed by hand).
type UnrecognisedRuleError struct {
	// Chain is the chain holding the rule.
	Chain string
}

// Error implements error.
func (e *UnrecognisedRuleError) Error() string {
	return fmt.Sprintf("unrecognised rule in chain %s (table not written by this nodeproxy version?)", e.Chain)
}

// unrecognisedRule stands for a rule that could not be decoded. The tracer cannot evaluate
// it, so a trace that reaches it fails; its text names the chain.
type unrecognisedRule struct{ chain string }

func (u unrecognisedRule) render(*family) string {
	return (&UnrecognisedRuleError{Chain: u.chain}).Error()
}

// ErrNoTable is returned (wrapped) by ReadKernel when neither `ip nodeproxy` nor
// `ip6 nodeproxy` exists.
var ErrNoTable = errors.New("no nodeproxy table (is nodeproxy running with --mode=nftables?)")

// ReadKernel reads the tables `ip nodeproxy` and `ip6 nodeproxy` of the network namespace
// netNSFd refers to (0: the current one) over netlink. Sets whose names nodeproxy does not use
// are ignored; a set of nodeproxy's with another type, or an element that does not fit its
// set, is an error. Equivalent to: `nft list table ip nodeproxy; nft list table ip6 nodeproxy`.
func ReadKernel(netNSFd int) (*Ruleset, error) {
	var opts []gnft.ConnOption
	if netNSFd != 0 {
		opts = append(opts, gnft.WithNetNSFd(netNSFd))
	}
	conn, err := gnft.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink connection: %w", err)
	}
	rs := &Ruleset{fake: NewFake(), unrecognised: map[*family][]string{}}
	for _, fam := range []*family{familyIPv4, familyIPv6} {
		tables, err := conn.ListTablesOfFamily(fam.table)
		if err != nil {
			return nil, fmt.Errorf("listing %s tables: %w", fam.kw, err)
		}
		found := false
		for _, t := range tables {
			found = found || t.Name == TableName
		}
		if !found {
			continue
		}
		t, bad, err := readTable(conn, netNSFd, fam)
		if err != nil {
			return nil, fmt.Errorf("reading table %s %s: %w", fam.kw, TableName, err)
		}
		rs.fake.tables[tableID{fam: fam, name: TableName}] = t
		rs.unrecognised[fam] = bad
	}
	if len(rs.fake.tables) == 0 {
		return nil, ErrNoTable
	}
	return rs, nil
}

// Families returns the IP families that have a table, IPv4 first.
func (rs *Ruleset) Families() []v1.IPFamily {
	var out []v1.IPFamily
	for _, fam := range []*family{familyIPv4, familyIPv6} {
		if rs.fake.snapshot(fam.ipFamily, TableName) != nil {
			out = append(out, fam.ipFamily)
		}
	}
	return out
}

// Trace runs p through the table of its family as Fake.Trace does. A packet that meets a rule
// this version cannot read fails with *UnrecognisedRuleError.
func (rs *Ruleset) Trace(p Packet, node TraceNode) (TraceResult, error) {
	fam := familyIPv4
	if !p.Dst.Unmap().Is4() {
		fam = familyIPv6
	}
	if rs.fake.snapshot(fam.ipFamily, TableName) == nil {
		return TraceResult{}, fmt.Errorf("no %s %s table: nodeproxy does not program %s here: %w", fam.kw, TableName, fam.ipFamily, ErrNotFound)
	}
	res, err := rs.fake.Trace(p, node)
	if err != nil {
		for _, c := range rs.unrecognised[fam] {
			if strings.Contains(err.Error(), unrecognisedRule{chain: c}.render(fam)) {
				return TraceResult{}, &UnrecognisedRuleError{Chain: c}
			}
		}
		return TraceResult{}, fmt.Errorf("tracing %s -> %s: %w", p.Src, p.Dst, err)
	}
	return res, nil
}

// readTable reads one family's table: its sets and their elements, its chains and their rules.
// It also returns the chains holding rules it could not decode.
func readTable(conn *gnft.Conn, netNSFd int, fam *family) (*fakeTable, []string, error) {
	table := fam.tableRef(TableName)
	t := &fakeTable{chains: map[string]*chain{}, sets: map[string]*fakeSet{}}
	sets, err := conn.GetSets(table)
	if err != nil {
		return nil, nil, fmt.Errorf("listing sets: %w", err)
	}
	for _, s := range sets {
		spec := fam.setIndex[s.Name]
		if spec == nil {
			continue // not ours: rules that use it are not recognised either
		}
		if err := checkSetType(spec, s); err != nil {
			return nil, nil, fmt.Errorf("set %s: %w", s.Name, err)
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return nil, nil, fmt.Errorf("listing elements of set %s: %w", s.Name, err)
		}
		fs := &fakeSet{spec: spec, elems: make(map[string]element, len(elems))}
		for _, ge := range elems {
			e, err := decodeSetElement(spec, ge)
			if err != nil {
				return nil, nil, fmt.Errorf("element of set %s: %w", s.Name, err)
			}
			fs.elems[e.key+e.keyEnd] = e
		}
		t.sets[s.Name] = fs
	}
	chains, err := conn.ListChainsOfTableFamily(fam.table)
	if err != nil {
		return nil, nil, fmt.Errorf("listing chains: %w", err)
	}
	rules, err := listRules(netNSFd, fam)
	if err != nil {
		return nil, nil, err
	}
	var bad []string
	for _, gc := range chains {
		if gc.Table == nil || gc.Table.Name != TableName {
			continue
		}
		c, ok, err := readChain(fam, gc, rules[gc.Name])
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			bad = append(bad, c.name)
		}
		t.chains[c.name] = c
	}
	return t, bad, nil
}

// readChain rebuilds one chain from its listing; ok is false when a rule was not recognised.
func readChain(fam *family, gc *gnft.Chain, rules []listedRule) (c *chain, ok bool, err error) {
	c = &chain{name: gc.Name}
	if c.base, err = decodeBaseHook(gc); err != nil {
		return nil, false, fmt.Errorf("chain %s: %w", gc.Name, err)
	}
	ok = true
	for _, lr := range rules {
		ru, err := decodeRule(fam, lr.exprs, lr.udata)
		if err != nil {
			ru, ok = r(unrecognisedRule{chain: gc.Name}), false
		}
		c.rules = append(c.rules, ru)
	}
	return c, ok, nil
}

// checkSetType compares a set's kind and sizes with nodeproxy's declaration of it.
func checkSetType(spec *setSpec, s *gnft.Set) error {
	isMap := spec.verdictMap || spec.data != nil
	switch {
	case s.IsMap != isMap, s.Interval != spec.interval, s.Dynamic != spec.dynamic:
		return fmt.Errorf("map %t, interval %t, dynamic %t; want %t, %t, %t (table not written by this nodeproxy version?)",
			s.IsMap, s.Interval, s.Dynamic, isMap, spec.interval, spec.dynamic)
	case !spec.verdictMap && s.KeyType.Bytes != uint32(keyLen(spec.key)):
		// google/nftables overwrites a verdict map's key type with the data type: its elements'
		// keys are checked instead.
		return fmt.Errorf("key of %d bytes, want %d", s.KeyType.Bytes, keyLen(spec.key))
	case spec.data != nil && s.DataType.Bytes != uint32(keyLen(spec.data)):
		return fmt.Errorf("value of %d bytes, want %d", s.DataType.Bytes, keyLen(spec.data))
	}
	return nil
}

// decodeSetElement converts an element as listed by the kernel.
func decodeSetElement(spec *setSpec, ge gnft.SetElement) (element, error) {
	e := element{key: string(ge.Key), comment: ge.Comment}
	if want := keyLen(spec.key); len(e.key) != want {
		return element{}, fmt.Errorf("key of %d bytes, want %d", len(e.key), want)
	}
	if spec.interval {
		e.keyEnd = string(ge.KeyEnd)
		if e.keyEnd == "" {
			e.keyEnd = e.key
		}
		if len(e.keyEnd) != len(e.key) {
			return element{}, fmt.Errorf("range end of %d bytes, want %d", len(e.keyEnd), len(e.key))
		}
	}
	switch {
	case spec.verdictMap:
		v, err := decodeVerdictData(ge.Val)
		if err != nil {
			return element{}, fmt.Errorf("%s: %w", formatData(spec.key, e.key), err)
		}
		e.verd = v
	case spec.data != nil:
		e.value = string(ge.Val)
		if want := keyLen(spec.data); len(e.value) != want {
			return element{}, fmt.Errorf("%s: value of %d bytes, want %d", formatData(spec.key, e.key), len(e.value), want)
		}
	}
	return e, nil
}

// decodeVerdictData decodes a verdict map element's data: google/nftables leaves the nested
// NFTA_VERDICT_CODE and NFTA_VERDICT_CHAIN attributes undecoded.
func decodeVerdictData(b []byte) (verdict, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return verdict{}, fmt.Errorf("decoding verdict: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	code, haveCode := int32(0), false
	var v verdict
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code, haveCode = int32(ad.Uint32()), true
		case unix.NFTA_VERDICT_CHAIN:
			v.chain = ad.String()
		}
	}
	if err := ad.Err(); err != nil {
		return verdict{}, fmt.Errorf("decoding verdict: %w", err)
	}
	const nfDrop, nfAccept = 0, 1 // NF_DROP, NF_ACCEPT (linux/netfilter.h)
	kinds := map[int32]verdictKind{
		unix.NFT_JUMP: verdictJump, unix.NFT_GOTO: verdictGoto, nfDrop: verdictDrop,
		nfAccept: verdictAccept, unix.NFT_RETURN: verdictReturn,
	}
	kind, ok := kinds[code]
	if !haveCode || !ok || (v.chain != "") != (kind == verdictJump || kind == verdictGoto) {
		return verdict{}, fmt.Errorf("unrecognised verdict code %d (chain %q)", code, v.chain)
	}
	v.kind = kind
	return v, nil
}

// decodeBaseHook returns a base chain's hook (nil for a regular chain).
func decodeBaseHook(gc *gnft.Chain) (*baseHook, error) {
	if gc.Hooknum == nil {
		return nil, nil
	}
	for name, h := range hooks {
		if *h == *gc.Hooknum {
			var prio int32
			if gc.Priority != nil {
				prio = int32(*gc.Priority)
			}
			return &baseHook{typ: string(gc.Type), hook: name, priority: prio}, nil
		}
	}
	return nil, fmt.Errorf("unrecognised hook %d", *gc.Hooknum)
}

// decodeRule rebuilds a rule from its expressions and user data. The result is checked by
// encoding it again: anything but exactly the listed expressions is an error.
func decodeRule(fam *family, exprs []expr.Any, udata []byte) (rule, error) {
	rd := &exprReader{fam: fam, ex: exprs}
	var ru rule
	for rd.i < len(rd.ex) {
		e, err := rd.next()
		if err != nil {
			return rule{}, err
		}
		ru.exprs = append(ru.exprs, e)
	}
	ru.comment, _ = userdata.GetString(udata, userdata.TypeComment)
	again, _, err := encodeRule(fam, ru, readbackSets{fam: fam})
	if err != nil {
		return rule{}, fmt.Errorf("re-encoding %q: %w", ru.render(fam), err)
	}
	if len(again) != len(exprs) {
		return rule{}, fmt.Errorf("%q encodes to %d expressions, listed %d", ru.render(fam), len(again), len(exprs))
	}
	for i := range again {
		if !reflect.DeepEqual(normalizeExpr(again[i]), normalizeExpr(exprs[i])) {
			return rule{}, fmt.Errorf("%q: expression %d is %#v, want %#v", ru.render(fam), i, exprs[i], again[i])
		}
	}
	return ru, nil
}

// normalizeExpr clears what legitimately differs between an encoded and a listed expression:
// set IDs (only meaningful within a batch) and the kernel's NAT register ranges.
func normalizeExpr(e expr.Any) expr.Any {
	switch e := e.(type) {
	case *expr.Lookup:
		c := *e
		c.SetID = 0
		return &c
	case *expr.Dynset:
		c := *e
		c.SetID = 0
		return &c
	case *expr.NAT:
		// The kernel lists a single address or port register as a range of one and flags it.
		c := *e
		if c.RegAddrMax == c.RegAddrMin {
			c.RegAddrMax = 0
		}
		if c.RegProtoMax == c.RegProtoMin {
			c.RegProtoMax = 0
		}
		c.Specified = false
		return &c
	}
	return e
}

// readbackSets implements setInfo for re-encoding: every set already exists.
type readbackSets struct{ fam *family }

func (s readbackSets) lookupSet(name string) (uint32, bool) {
	spec := s.fam.setIndex[name]
	return 0, spec != nil && spec.interval
}

// exprReader decodes a rule's expressions, one rule expression (several netlink expressions)
// at a time. It only has to tell nodeproxy's shapes apart; decodeRule checks the details.
type exprReader struct {
	fam *family
	ex  []expr.Any
	i   int
}

var errUnrecognised = errors.New("unrecognised expression")

// peek returns the expression k places ahead (nil past the end).
func (rd *exprReader) peek(k int) expr.Any {
	if rd.i+k < len(rd.ex) {
		return rd.ex[rd.i+k]
	}
	return nil
}

// next decodes the rule expression starting at the cursor.
func (rd *exprReader) next() (ruleExpr, error) {
	switch e := rd.peek(0).(type) {
	case *expr.Ct:
		rd.i += 3
		if e.Key == expr.CtKeySTATUS {
			return ctStatusDNAT{}, nil
		}
		return ctStateNew{}, nil
	case *expr.Fib:
		rd.i += 2
		return fibLocal{saddr: e.FlagSADDR}, nil
	case *expr.Masq:
		rd.i++
		return masquerade{}, nil
	case *expr.Reject:
		rd.i++
		return rejectStmt{}, nil
	case *expr.Verdict:
		rd.i++
		return decodeRuleVerdict(e)
	case *expr.Meta:
		switch e.Key {
		case expr.MetaKeyMARK:
			return rd.mark()
		case expr.MetaKeyIIFNAME:
			return rd.ifname()
		}
	case *expr.Numgen:
		if _, ok := rd.peek(1).(*expr.Cmp); ok && e.Type == unix.NFT_NG_RANDOM {
			rd.i += 2
			return randomZero{mod: e.Modulus}, nil
		}
	case *expr.Payload:
		switch rd.peek(1).(type) {
		case *expr.Cmp, *expr.Bitwise:
			return rd.addrMatch(e)
		}
	}
	return rd.keyed()
}

// decodeRuleVerdict converts a verdict expression.
func decodeRuleVerdict(e *expr.Verdict) (ruleExpr, error) {
	kinds := map[expr.VerdictKind]verdictKind{
		expr.VerdictJump: verdictJump, expr.VerdictGoto: verdictGoto, expr.VerdictDrop: verdictDrop,
		expr.VerdictAccept: verdictAccept, expr.VerdictReturn: verdictReturn,
	}
	k, ok := kinds[e.Kind]
	if !ok {
		return nil, fmt.Errorf("verdict %d: %w", e.Kind, errUnrecognised)
	}
	return verdictStmt{verdict{kind: k, chain: e.Chain}}, nil
}

// mark decodes `meta mark & m != 0` and `meta mark set meta mark | m` (or `^ m`).
func (rd *exprReader) mark() (ruleExpr, error) {
	bw, ok := rd.peek(1).(*expr.Bitwise)
	if !ok || len(bw.Mask) != 4 || len(bw.Xor) != 4 {
		return nil, fmt.Errorf("meta mark: %w", errUnrecognised)
	}
	mask, xor := binary.NativeEndian.Uint32(bw.Mask), binary.NativeEndian.Uint32(bw.Xor)
	rd.i += 3
	switch third := rd.peek(-1).(type) {
	case *expr.Cmp:
		return markTest{mark: mask}, nil
	case *expr.Meta:
		if third.SourceRegister && mask == ^xor {
			return markOr{mark: xor}, nil
		}
		return markXor{mark: xor}, nil
	}
	return nil, fmt.Errorf("meta mark: %w", errUnrecognised)
}

// ifname decodes `iifname [!=] "name"` and `iifname [!=] "prefix*"`.
func (rd *exprReader) ifname() (ruleExpr, error) {
	cmp, ok := rd.peek(1).(*expr.Cmp)
	if !ok {
		return nil, fmt.Errorf("iifname: %w", errUnrecognised)
	}
	rd.i += 2
	m := ifnameMatch{name: string(cmp.Data), prefix: true, negate: cmp.Op == expr.CmpOpNeq}
	if len(cmp.Data) == unix.IFNAMSIZ && cmp.Data[len(cmp.Data)-1] == 0 {
		m.name, m.prefix = strings.TrimRight(m.name, "\x00"), false
	}
	return m, nil
}

// addrMatch decodes `ip saddr|daddr [!=] prefix`.
func (rd *exprReader) addrMatch(pl *expr.Payload) (ruleExpr, error) {
	size := rd.fam.addr.size()
	m := addrMatch{saddr: pl.Offset == rd.fam.saddrOffset}
	bitLen := int(pl.Len) * 8
	rd.i++
	if bw, ok := rd.peek(0).(*expr.Bitwise); ok {
		bitLen = 0
		for _, b := range bw.Mask {
			bitLen += bits.OnesCount8(b)
		}
		rd.i++
	}
	cmp, ok := rd.peek(0).(*expr.Cmp)
	if !ok || len(cmp.Data) > size {
		return nil, fmt.Errorf("address match: %w", errUnrecognised)
	}
	rd.i++
	raw := make([]byte, size)
	copy(raw, cmp.Data)
	ip, _ := netip.AddrFromSlice(raw)
	m.prefix, m.negate = netip.PrefixFrom(ip, bitLen), cmp.Op == expr.CmpOpNeq
	return m, nil
}

// keyed decodes a key loaded into registers followed by what uses it: a set lookup, a verdict
// map, a DNAT map or a dynamic set update.
func (rd *exprReader) keyed() (ruleExpr, error) {
	var key []keyField
	for {
		switch e := rd.peek(0).(type) {
		case *expr.Payload:
			switch {
			case e.Base == expr.PayloadBaseTransportHeader:
				key = append(key, kDport)
			case e.Offset == rd.fam.saddrOffset:
				key = append(key, kSaddr)
			default:
				key = append(key, kDaddr)
			}
		case *expr.Meta:
			if e.Key != expr.MetaKeyL4PROTO {
				return nil, fmt.Errorf("meta key %d: %w", e.Key, errUnrecognised)
			}
			key = append(key, kL4Proto)
			if _, ok := rd.peek(1).(*expr.Byteorder); ok {
				rd.i++
			}
		case *expr.Numgen:
			if e.Type == unix.NFT_NG_RANDOM {
				key = append(key, kRandom(int(e.Modulus)))
			} else {
				key = append(key, kConst(int(e.Offset)))
			}
		case *expr.Lookup:
			rd.i++
			return rd.lookup(key, e)
		case *expr.Dynset:
			rd.i++
			if len(key) == 0 || rd.fam.setIndex[e.SetName] == nil {
				return nil, fmt.Errorf("update of @%s: %w", e.SetName, errUnrecognised)
			}
			return dynUpdate{key: key, set: e.SetName, timeout: e.Timeout}, nil
		default:
			return nil, fmt.Errorf("%T: %w", e, errUnrecognised)
		}
		rd.i++
	}
}

// lookup decodes what a lookup of key in a set does.
func (rd *exprReader) lookup(key []keyField, l *expr.Lookup) (ruleExpr, error) {
	if len(key) == 0 || rd.fam.setIndex[l.SetName] == nil {
		return nil, fmt.Errorf("lookup in @%s: %w", l.SetName, errUnrecognised)
	}
	switch {
	case !l.IsDestRegSet:
		return setMatch{key: key, set: l.SetName, negate: l.Invert}, nil
	case l.DestRegister == 0:
		return vmapLookup{key: key, set: l.SetName}, nil
	}
	if _, ok := rd.peek(0).(*expr.NAT); !ok {
		return nil, fmt.Errorf("map @%s without dnat: %w", l.SetName, errUnrecognised)
	}
	rd.i++
	return dnatMap{key: key, set: l.SetName}, nil
}
