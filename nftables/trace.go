package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Packet is the first packet of a new connection, as Trace sees it.
type Packet struct {
	// Src and Dst are the packet's addresses (of one family).
	Src, Dst netip.Addr
	// Protocol is TCP, UDP or SCTP.
	Protocol v1.Protocol
	// Port is the destination port.
	Port int32
	// IIFName is the interface the packet arrives on ("" for packets the node sends).
	IIFName string
	// FromHost marks packets the node sends itself: they take the output hooks.
	FromHost bool
}

// TraceNode is what the tracer knows about the node.
type TraceNode struct {
	// LocalAddrs are the node's own addresses (`fib ... type local`); loopback is always local.
	LocalAddrs []netip.Addr
}

// Trace verdicts.
const (
	TraceAccept = "accept"
	TraceDrop   = "drop"
	TraceReject = "reject"
)

// TraceResult is what happens to a traced packet.
type TraceResult struct {
	// Verdict is TraceAccept, TraceDrop or TraceReject.
	Verdict string
	// Endpoints are every destination the packet may be DNATed to (none: not DNATed).
	Endpoints []netip.AddrPort
	// Masquerade is true when the packet is marked for masquerading (whatever the endpoint).
	Masquerade bool
	// Hairpin are the endpoints for which the packet is masqueraded as hairpin traffic.
	Hairpin []netip.AddrPort
	// Sticky is true when the path records ClientIP affinity.
	Sticky bool
}

// Trace runs p through the Fake's nodeproxy table of p's family, hook by hook as the kernel
// would (pre-DNAT filter, DNAT, input/forward/output filter, postrouting), following every
// random branch, and returns what happens. Packets from elsewhere take prerouting, then input
// when the (translated) destination is local and forward otherwise; packets from the host take
// the output hooks.
func (f *Fake) Trace(p Packet, node TraceNode) (TraceResult, error) {
	fam := familyIPv4
	if !p.Dst.Unmap().Is4() {
		fam = familyIPv6
	}
	t := f.snapshot(fam.ipFamily, TableName)
	if t == nil {
		return TraceResult{}, fmt.Errorf("no %s %s table: %w", fam.kw, TableName, ErrNotFound)
	}
	tr := &tracer{fam: fam, t: t, local: node.LocalAddrs}
	start := traceState{src: p.Src.Unmap(), dst: netip.AddrPortFrom(p.Dst.Unmap(), uint16(p.Port)), proto: protoNumber(p.Protocol), iif: p.IIFName, fromHost: p.FromHost}
	finals, err := tr.hooks(start)
	if err != nil {
		return TraceResult{}, err
	}
	return summarize(finals)
}

// traceState is one possible fate of the packet.
type traceState struct {
	src      netip.Addr
	dst      netip.AddrPort
	proto    uint8
	iif      string
	fromHost bool
	mark     uint32
	marked   bool // marked for masquerading at some point
	dnatted  bool
	masq     bool
	sticky   bool
	verdict  string
}

// outcome is one way a chain evaluation ends: with a verdict (done) or by returning.
type outcome struct {
	st   traceState
	done bool
}

type tracer struct {
	fam   *family
	t     *fakeTable
	local []netip.Addr
}

// hooks runs the base chains in hook order and returns every final state.
func (tr *tracer) hooks(st traceState) ([]traceState, error) {
	pre, nat, filter := "filter-prerouting-pre-dnat", "nat-prerouting", "filter-forward"
	if st.fromHost {
		pre, nat, filter = "filter-output-pre-dnat", "nat-output", "filter-output"
	}
	states := []traceState{st}
	for _, hook := range []string{pre, nat, filter, "nat-postrouting"} {
		var next []traceState
		for _, s := range states {
			if s.verdict == TraceDrop || s.verdict == TraceReject {
				next = append(next, s)
				continue
			}
			name := hook
			if hook == "filter-forward" && tr.isLocal(s.dst.Addr()) {
				name = "filter-input"
			}
			if hook == "nat-postrouting" && !st.fromHost && tr.isLocal(s.dst.Addr()) {
				next = append(next, s) // delivered locally: no postrouting
				continue
			}
			outs, err := tr.chain(name, s, 0)
			if err != nil {
				return nil, err
			}
			for _, o := range outs {
				if o.st.verdict == "" || o.st.verdict == TraceAccept {
					o.st.verdict = ""
				}
				next = append(next, o.st)
			}
		}
		states = next
	}
	return states, nil
}

func (tr *tracer) isLocal(ip netip.Addr) bool {
	return ip.IsLoopback() || slices.Contains(tr.local, ip)
}

// chain evaluates a chain; a missing base chain lets the packet through.
func (tr *tracer) chain(name string, st traceState, depth int) ([]outcome, error) {
	if depth > 32 {
		return nil, fmt.Errorf("chain %s: too deep", name)
	}
	c := tr.t.chains[name]
	if c == nil {
		return []outcome{{st: st}}, nil
	}
	return tr.rulesFrom(c, 0, st, depth)
}

// rulesFrom evaluates c's rules from rule i on.
func (tr *tracer) rulesFrom(c *chain, i int, st traceState, depth int) ([]outcome, error) {
	if i >= len(c.rules) {
		return []outcome{{st: st}}, nil
	}
	return tr.exprsFrom(c, i, 0, st, depth)
}

// exprsFrom evaluates rule i of c from expression j on.
func (tr *tracer) exprsFrom(c *chain, i, j int, st traceState, depth int) ([]outcome, error) {
	ru := c.rules[i]
	if j >= len(ru.exprs) {
		return tr.rulesFrom(c, i+1, st, depth)
	}
	next := func(s traceState) ([]outcome, error) { return tr.exprsFrom(c, i, j+1, s, depth) }
	nextRule := func(s traceState) ([]outcome, error) { return tr.rulesFrom(c, i+1, s, depth) }
	return tr.eval(ru.exprs[j], st, depth, next, nextRule)
}

// eval evaluates one expression: next continues the rule, nextRule skips to the next rule
// (a failed match), and a verdict ends or redirects the evaluation.
func (tr *tracer) eval(e ruleExpr, st traceState, depth int, next, nextRule func(traceState) ([]outcome, error)) ([]outcome, error) {
	if ok, known := tr.match(e, st); known {
		if ok {
			return next(st)
		}
		return nextRule(st)
	}
	switch e := e.(type) {
	case randomZero:
		a, err := next(st)
		if err != nil {
			return nil, err
		}
		b, err := nextRule(st)
		return append(a, b...), err
	case markOr:
		st.mark |= e.mark
		st.marked = true
	case markXor:
		st.mark ^= e.mark
	case dynUpdate:
		st.sticky = true
	case masquerade:
		st.masq = true
		return []outcome{{st: st, done: true}}, nil
	case rejectStmt:
		st.verdict = TraceReject
		return []outcome{{st: st, done: true}}, nil
	case dnatMap:
		return tr.dnat(e, st, nextRule)
	case vmapLookup:
		el, ok := tr.lookup(e.set, tr.keys(e.key, st)[0])
		if !ok {
			return nextRule(st)
		}
		return tr.verdict(el.verd, st, depth, nextRule)
	case verdictStmt:
		return tr.verdict(e.v, st, depth, nextRule)
	default:
		return nil, fmt.Errorf("tracer cannot evaluate %q", e.render(tr.fam))
	}
	return next(st)
}

// match evaluates a pure match; known is false for anything else.
func (tr *tracer) match(e ruleExpr, st traceState) (ok, known bool) {
	switch e := e.(type) {
	case ctStateNew:
		return true, true
	case ctStatusDNAT:
		return st.dnatted, true
	case fibLocal:
		if e.saddr {
			return tr.isLocal(st.src), true
		}
		return tr.isLocal(st.dst.Addr()), true
	case addrMatch:
		ip := st.dst.Addr()
		if e.saddr {
			ip = st.src
		}
		return e.prefix.Contains(ip) != e.negate, true
	case ifnameMatch:
		hit := st.iif == e.name || (e.prefix && strings.HasPrefix(st.iif, e.name))
		return hit != e.negate, true
	case markTest:
		return st.mark&e.mark != 0, true
	case setMatch:
		found := false
		for _, k := range tr.keys(e.key, st) {
			if _, ok := tr.lookup(e.set, k); ok {
				found = true
			}
		}
		return found != e.negate, true
	}
	return false, false
}

// verdict runs a verdict: jump returns to nextRule, goto does not, the others end.
func (tr *tracer) verdict(v verdict, st traceState, depth int, nextRule func(traceState) ([]outcome, error)) ([]outcome, error) {
	switch v.kind {
	case verdictJump, verdictGoto:
		outs, err := tr.chain(v.chain, st, depth+1)
		if err != nil || v.kind == verdictGoto {
			return outs, err
		}
		var all []outcome
		for _, o := range outs {
			if o.done {
				all = append(all, o)
				continue
			}
			more, err := nextRule(o.st)
			if err != nil {
				return nil, err
			}
			all = append(all, more...)
		}
		return all, nil
	case verdictDrop:
		st.verdict = TraceDrop
	case verdictAccept:
		st.verdict = TraceAccept
	case verdictReturn:
		return []outcome{{st: st}}, nil
	}
	return []outcome{{st: st, done: true}}, nil
}

// dnat translates the destination to every endpoint the key may map to.
func (tr *tracer) dnat(e dnatMap, st traceState, nextRule func(traceState) ([]outcome, error)) ([]outcome, error) {
	var outs []outcome
	for _, k := range tr.keys(e.key, st) {
		el, ok := tr.lookup(e.set, k)
		if !ok {
			continue
		}
		addrLen := tr.fam.addr.size()
		ip, _ := netip.AddrFromSlice([]byte(el.value[:addrLen]))
		port := uint16(el.value[addrLen])<<8 | uint16(el.value[addrLen+1])
		s := st
		s.dst, s.dnatted = netip.AddrPortFrom(ip, port), true
		outs = append(outs, outcome{st: s, done: true})
	}
	if len(outs) == 0 {
		return nextRule(st)
	}
	return outs, nil
}

// keys builds every key a lookup may use (a random component gives one key per value).
func (tr *tracer) keys(fields []keyField, st traceState) []string {
	keys := []keyBuf{nil}
	for _, f := range fields {
		var next []keyBuf
		for _, k := range keys {
			switch f.src {
			case srcSaddr:
				next = append(next, k.addr(st.src))
			case srcDaddr:
				next = append(next, k.addr(st.dst.Addr()))
			case srcL4Proto:
				next = append(next, k.proto(st.proto))
			case srcDport:
				next = append(next, k.port(st.dst.Port()))
			case srcConst:
				next = append(next, k.slot(f.n))
			case srcRandom:
				for i := range f.n {
					next = append(next, append(slices.Clone(k), keyBuf{}.slot(i)...))
				}
			}
		}
		keys = next
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = string(k)
	}
	return out
}

// lookup finds the element of set matching key (ranges included).
func (tr *tracer) lookup(set, key string) (element, bool) {
	s := tr.t.sets[set]
	if s == nil {
		return element{}, false
	}
	if !s.spec.interval {
		el, ok := s.elems[key]
		return el, ok
	}
	head := len(key) - s.spec.key[len(s.spec.key)-1].padded()
	for _, el := range s.elems {
		if len(el.key) == len(key) && el.key[:head] == key[:head] && el.key[head:] <= key[head:] && key[head:] <= el.keyEnd[head:] {
			return el, true
		}
	}
	return element{}, false
}

// summarize folds the final states into one result.
func summarize(finals []traceState) (TraceResult, error) {
	var res TraceResult
	for i, s := range finals {
		v := s.verdict
		if v == "" {
			v = TraceAccept
		}
		if i > 0 && v != res.Verdict {
			return TraceResult{}, fmt.Errorf("the packet's fate depends on chance: %s and %s", res.Verdict, v)
		}
		res.Verdict = v
		res.Sticky = res.Sticky || s.sticky
		if !s.dnatted {
			continue
		}
		if !slices.Contains(res.Endpoints, s.dst) {
			res.Endpoints = append(res.Endpoints, s.dst)
		}
		if s.masq && !s.marked && !slices.Contains(res.Hairpin, s.dst) {
			res.Hairpin = append(res.Hairpin, s.dst)
		}
	}
	for _, s := range finals {
		res.Masquerade = res.Masquerade || (s.masq && s.marked)
	}
	slices.SortFunc(res.Endpoints, netip.AddrPort.Compare)
	slices.SortFunc(res.Hairpin, netip.AddrPort.Compare)
	return res, nil
}
