package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeproxy/nodeproxy/proxier/proxiertest"
)

// tracePkt is one packet (or one candidate path of it) going through the tables.
type tracePkt struct {
	src, dst  netip.Addr
	proto     string
	dport     int
	mark      uint64
	dnat      string // "ip:port" once DNATed
	verdict   string // ACCEPT, DROP, REJECT once decided
	masq      bool   // reached MASQUERADE
	sticky    bool   // passed an affinity check (-m recent --rcheck)
	recentSet bool   // recorded affinity (-m recent --set)
}

// tracer evaluates packets over a Fake's tables. It understands exactly the matches and
// targets nodeproxy writes; anything else is an error, so new rule syntax must be taught here.
// Random (-m statistic) rules fork the packet: every endpoint is collected.
type tracer struct {
	fake  *Fake
	local []netip.Addr // addrtype LOCAL, besides loopback
	errs  []string
}

// errorf records a tracer error.
func (tr *tracer) errorf(format string, args ...any) {
	tr.errs = append(tr.errs, fmt.Sprintf(format, args...))
}

// isLocal reports whether ip is a local address of the node.
func (tr *tracer) isLocal(ip netip.Addr) bool {
	return ip.IsLoopback() || slices.Contains(tr.local, ip)
}

// runChain runs p through a chain. finals have a verdict (or were DNATed/masqueraded, which
// ends the chain traversal of their table); live fell through or returned.
func (tr *tracer) runChain(table, chain string, p tracePkt, depth int) (finals, live []tracePkt) {
	if depth > 16 {
		tr.errorf("jump depth exceeded at %s/%s", table, chain)
		return nil, nil
	}
	rules := tr.fake.Rules(table, chain)
	if rules == nil && !slices.Contains(mustChainNames(tr.fake, table), chain) {
		tr.errorf("no chain %s/%s", table, chain)
		return nil, nil
	}
	cur := []tracePkt{p}
	var returned []tracePkt
	for _, spec := range rules {
		args, err := splitArgs(spec)
		if err != nil {
			tr.errorf("bad rule %q: %v", spec, err)
			return nil, nil
		}
		var next []tracePkt
		for _, pk := range cur {
			matched, after, skip, forked := tr.match(args, pk)
			if !matched {
				next = append(next, after)
				continue
			}
			if forked {
				next = append(next, skip)
			}
			f, cont, ret := tr.target(table, args, after, depth)
			finals = append(finals, f...)
			next = append(next, cont...)
			returned = append(returned, ret...)
		}
		cur = next
	}
	return finals, append(cur, returned...)
}

// mustChainNames lists a Fake table's chains.
func mustChainNames(f *Fake, table string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.table(table).chainOrder(table)
}

// match evaluates a rule's matches in order, as iptables does: the first one that fails ends
// the evaluation, so the side effects of later ones (-m recent --set) do not happen. A random
// (statistic) match forks: the packet takes the rule, and also goes on as it was when the
// statistic match let it by (skip, valid when forked). after is p with the side effects of the
// matches evaluated.
func (tr *tracer) match(args []string, p tracePkt) (matched bool, after tracePkt, skip tracePkt, forked bool) {
	neg := false
	for i := 0; i < len(args); i++ {
		opt := args[i]
		if opt == "!" {
			neg = true
			continue
		}
		if opt == "-j" || opt == "-g" {
			break
		}
		val := ""
		if i+1 < len(args) {
			val = args[i+1]
		}
		before := p
		res, consumed, known := tr.matchOption(opt, val, &p)
		if !known {
			tr.errorf("unknown match %q in %q", opt, args)
			return false, p, p, false
		}
		if neg {
			res, neg = !res, false
		}
		if !res {
			return false, p, skip, false
		}
		if opt == "--probability" {
			skip, forked = before, true
		}
		i += consumed
	}
	return true, p, skip, forked
}

// matchOption evaluates one option. consumed is how many arguments after opt it used.
func (tr *tracer) matchOption(opt, val string, p *tracePkt) (res bool, consumed int, known bool) {
	switch opt {
	case "-m", "--comment", "--mode", "--name", "--seconds", "--probability":
		return true, 1, true
	case "--reap":
		return true, 0, true
	case "--rcheck", "--update": // no affinity history for a first packet, but the path honours affinity
		p.sticky = true
		return false, 0, true
	case "--set":
		p.recentSet = true
		return true, 0, true
	case "-p":
		return p.proto == val, 1, true
	case "--dport":
		return strconv.Itoa(p.dport) == val, 1, true
	case "-d", "-s":
		addr := p.dst
		if opt == "-s" {
			addr = p.src
		}
		return addrMatches(val, addr), 1, true
	case "--dst-type", "--src-type":
		addr := p.dst
		if opt == "--src-type" {
			addr = p.src
		}
		return val == "LOCAL" && tr.isLocal(addr), 1, true
	case "--ctstate":
		states := []string{"NEW"}
		if p.dnat != "" {
			states = append(states, "DNAT")
		}
		return slices.ContainsFunc(strings.Split(val, ","), func(s string) bool { return slices.Contains(states, s) }), 1, true
	case "--mark":
		v, m, _ := strings.Cut(val, "/")
		value, err1 := strconv.ParseUint(v, 0, 32)
		mask, err2 := strconv.ParseUint(m, 0, 32)
		if err1 != nil || err2 != nil {
			tr.errorf("bad mark %q", val)
		}
		return p.mark&mask == value, 1, true
	}
	return false, 0, false
}

// addrMatches reports whether addr is the address or within the prefix spec.
func addrMatches(spec string, addr netip.Addr) bool {
	if pfx, err := netip.ParsePrefix(spec); err == nil {
		return pfx.Contains(addr)
	}
	ip, err := netip.ParseAddr(spec)
	return err == nil && ip == addr
}

// target applies a matched rule's target. finals end the traversal; cont go on in this chain;
// ret return to the calling chain.
func (tr *tracer) target(table string, args []string, p tracePkt, depth int) (finals, cont, ret []tracePkt) {
	target := targetOf(args)
	optVal := func(name string) string {
		if i := slices.Index(args, name); i >= 0 && i+1 < len(args) {
			return args[i+1]
		}
		tr.errorf("%s without %s in %q", target, name, args)
		return ""
	}
	switch target {
	case "":
		return nil, []tracePkt{p}, nil
	case "RETURN":
		return nil, nil, []tracePkt{p}
	case "ACCEPT", "DROP", "REJECT":
		p.verdict = target
		return []tracePkt{p}, nil, nil
	case "DNAT":
		p.dnat, p.verdict = optVal("--to-destination"), "ACCEPT"
		return []tracePkt{p}, nil, nil
	case "MASQUERADE":
		p.masq, p.verdict = true, "ACCEPT"
		return []tracePkt{p}, nil, nil
	case "MARK":
		if i := slices.Index(args, "--or-mark"); i >= 0 {
			v, _ := strconv.ParseUint(optVal("--or-mark"), 0, 32)
			p.mark |= v
		} else {
			v, _ := strconv.ParseUint(optVal("--xor-mark"), 0, 32)
			p.mark ^= v
		}
		return nil, []tracePkt{p}, nil
	}
	f, live := tr.runChain(table, target, p, depth+1)
	return f, live, nil
}

// trace runs one Case's first packet through nat, filter and nat POSTROUTING.
func (tr *tracer) trace(cfg proxiertest.Config, c proxiertest.Case) proxiertest.Traced {
	tr.errs = nil
	p := tracePkt{src: proxiertest.SourceAddr(cfg, c), dst: c.Dst, proto: strings.ToLower(string(c.Protocol)), dport: int(c.Port)}
	got := combine(tr.paths(p, c.From == proxiertest.FromNode))
	if len(tr.errs) > 0 {
		got.Verdict = proxiertest.Verdict("tracer error: " + strings.Join(tr.errs, "; "))
	}
	return got
}

// paths runs p through nat PREROUTING (OUTPUT when fromNode), filter and nat POSTROUTING, and
// returns the outcome of every candidate path (one per endpoint a random choice may pick).
func (tr *tracer) paths(p tracePkt, fromNode bool) []tracePkt {
	natChain := "PREROUTING"
	if fromNode {
		natChain = "OUTPUT"
	}
	finals, live := tr.runChain(tableNAT, natChain, p, 0)
	var outcomes []tracePkt
	for _, b := range append(finals, live...) {
		outcomes = append(outcomes, tr.afterNAT(b, fromNode))
	}
	return outcomes
}

// afterNAT runs a packet leaving nat PREROUTING/OUTPUT through filter and POSTROUTING.
func (tr *tracer) afterNAT(b tracePkt, fromNode bool) tracePkt {
	if b.verdict == "DROP" || b.verdict == "REJECT" {
		return b
	}
	if b.dnat != "" {
		ap, err := netip.ParseAddrPort(b.dnat)
		if err != nil {
			tr.errorf("bad DNAT destination %q", b.dnat)
			return b
		}
		b.dst, b.dport = ap.Addr(), int(ap.Port())
	}
	chain := "FORWARD"
	switch {
	case fromNode:
		chain = "OUTPUT"
	case tr.isLocal(b.dst):
		chain = "INPUT"
	}
	b.verdict = ""
	ff, _ := tr.runChain(tableFilter, chain, b, 0)
	b.verdict = "ACCEPT"
	if len(ff) > 0 {
		b = ff[0]
	}
	if b.verdict != "ACCEPT" {
		return b
	}
	post, _ := tr.runChain(tableNAT, "POSTROUTING", b, 0)
	for _, q := range post {
		b.masq = b.masq || q.masq
	}
	return b
}

// combine turns every candidate path's outcome into one Traced; paths that disagree on the
// verdict give a verdict no Case wants.
func combine(outcomes []tracePkt) proxiertest.Traced {
	var got proxiertest.Traced
	verdicts := map[string]bool{}
	allSticky := len(outcomes) > 0
	for _, o := range outcomes {
		switch {
		case o.verdict == "DROP":
			verdicts[string(proxiertest.Drop)] = true
		case o.verdict == "REJECT":
			verdicts[string(proxiertest.Reject)] = true
		case o.dnat != "":
			verdicts[string(proxiertest.Reach)] = true
			got.Endpoints = append(got.Endpoints, o.dnat)
			got.Masquerade = got.Masquerade || o.masq
		default:
			verdicts["accepted without DNAT"] = true
		}
		allSticky = allSticky && o.sticky && o.recentSet
	}
	keys := sortedKeys(verdicts)
	got.Verdict = proxiertest.Verdict(strings.Join(keys, "+"))
	got.Sticky = allSticky
	return got
}
