package iptables

import (
	"hash/fnv"
	"slices"
	"strings"

	"github.com/nodeproxy/nodeproxy/endpoints"
)

// digest identifies a chain's content (FNV-128a of its rules).
type digest [16]byte

// digestOf returns the digest of a chain's rules.
func digestOf(c chainRules) digest {
	h := fnv.New128a()
	for _, r := range c.rules {
		h.Write([]byte(r))
		h.Write([]byte{'\n'})
	}
	var d digest
	copy(d[:], h.Sum(nil))
	return d
}

// committedPort is what the kernel holds for one service port, as of the last successful
// restore: its top-level rules verbatim (partial syncs delete them by spec) and a digest of
// each of its chains (partial syncs skip chains whose content is unchanged).
type committedPort struct {
	top           []topRule
	chains        map[string]digest
	natRules      int
	filterRules   int
	endpointCount int
}

// newCommittedPort records r.
func newCommittedPort(r *portRules) *committedPort {
	c := &committedPort{top: r.top, chains: make(map[string]digest, len(r.chains)), endpointCount: r.endpointCount}
	for _, ch := range r.chains {
		c.chains[ch.name] = digestOf(ch)
		c.natRules += len(ch.rules)
	}
	for _, t := range r.top {
		if t.table == tableNAT {
			c.natRules++
		} else {
			c.filterRules++
		}
	}
	return c
}

// committed is one family's programmed state. Partial syncs are computed against it alone:
// the kernel is never read on that path.
type committed struct {
	ports map[endpoints.ServicePortName]*committedPort
	// staticNAT and staticFilter count the rules that belong to no service port.
	staticNAT, staticFilter int
	natRules, filterRules   int
	// endpointCount counts the endpoints of all ports (large-cluster mode).
	endpointCount int
}

// set records (or with nil, forgets) one port's state and keeps the totals.
func (c *committed) set(name endpoints.ServicePortName, rec *committedPort) {
	if old := c.ports[name]; old != nil {
		c.natRules -= old.natRules
		c.filterRules -= old.filterRules
		c.endpointCount -= old.endpointCount
	}
	if rec == nil {
		delete(c.ports, name)
		return
	}
	c.ports[name] = rec
	c.natRules += rec.natRules
	c.filterRules += rec.filterRules
	c.endpointCount += rec.endpointCount
}

// builtPort is one service port with its rules, as a full sync builds them.
type builtPort struct {
	name  endpoints.ServicePortName
	rules *portRules
}

// renderFull writes a full sync: every top-level chain and every port's chain that the tables
// (saved: their iptables-save output, parsed, by table) do not already hold exactly is
// flushed and rewritten, and the stale service chains (existing, but not built: among them
// upstream's and older nodeproxy's KUBE-SEP chains) are deleted. Leaving identical chains
// alone makes a restart over our own rules, and every periodic full sync, write only what
// drifted. It returns the write and the state it programs.
func renderFull(fr *familyRules, ports []builtPort, saved map[string]savedChains) (*syncWrite, *committed) {
	sw := &syncWrite{support: []chainRules{fr.markMasqChain()}}
	state := &committed{ports: make(map[endpoints.ServicePortName]*committedPort, len(ports))}
	top := newTopLevel(fr.topChains())
	for _, r := range fr.staticRules() {
		top.add(r)
		state.countStatic(r.table)
	}
	active := map[string]bool{}
	nat := saved[tableNAT]
	for _, p := range ports {
		for _, r := range p.rules.top {
			top.add(r)
		}
		state.set(p.name, newCommittedPort(p.rules))
		changed := make([]chainRules, 0, len(p.rules.chains))
		for _, c := range p.rules.chains {
			active[c.name] = true
			if !nat.holds(c.name, c.rules) {
				changed = append(changed, c)
			}
		}
		sw.addPort(changed)
	}
	for _, r := range fr.nodePortJumps() {
		top.add(r)
		state.countStatic(r.table)
	}
	top.write(&sw.final, saved)
	stale := make([]string, 0, len(nat))
	for name := range nat {
		if isServiceChain(name) && !active[name] {
			stale = append(stale, name)
		}
	}
	slices.Sort(stale)
	for _, name := range stale {
		sw.final.deleteChain(tableNAT, name)
	}
	return sw, state
}

// topLevel collects the rules of the top-level chains of a full sync, chain by chain in
// order, so that each chain is written only when the kernel does not hold it already.
type topLevel struct {
	chains map[string][]string // by table, in order
	rules  map[[2]string][]string
}

// newTopLevel starts the top-level chains of each table (chains: by table).
func newTopLevel(chains map[string][]string) *topLevel {
	return &topLevel{chains: chains, rules: map[[2]string][]string{}}
}

// add appends a rule to its chain.
func (t *topLevel) add(r topRule) {
	key := [2]string{r.table, r.chain}
	if _, ok := t.rules[key]; !ok && !slices.Contains(t.chains[r.table], r.chain) {
		t.chains[r.table] = append(t.chains[r.table], r.chain)
	}
	t.rules[key] = append(t.rules[key], r.spec)
}

// write flushes and fills, in rt, every top-level chain whose rules saved does not hold.
func (t *topLevel) write(rt *restoreText, saved map[string]savedChains) {
	for _, table := range []string{tableFilter, tableNAT} {
		for _, chain := range t.chains[table] {
			rules := t.rules[[2]string{table, chain}]
			if saved[table].holds(chain, rules) {
				continue
			}
			rt.writeChain(table, chainRules{name: chain, rules: rules})
		}
	}
}

// countStatic counts one rule that belongs to no service port.
func (c *committed) countStatic(table string) {
	if table == tableNAT {
		c.staticNAT++
		c.natRules++
	} else {
		c.staticFilter++
		c.filterRules++
	}
}

// renderPortChange writes what turns old (nil: the port had no rules) into cur (nil: the port
// is gone) and returns the record of cur (nil when cur is nil). The chains whose content
// changed are written as the port's chains of sw; top-level rules are deleted and added one
// by one, and chains no longer used deleted, in sw's final restore.
func renderPortChange(sw *syncWrite, old *committedPort, cur *portRules) *committedPort {
	var oldTop []topRule
	var oldChains map[string]digest
	if old != nil {
		oldTop, oldChains = old.top, old.chains
	}
	var rec *committedPort
	var curTop []topRule
	if cur != nil {
		rec = newCommittedPort(cur)
		curTop = cur.top
		var changed []chainRules
		for _, c := range cur.chains {
			if d, ok := oldChains[c.name]; !ok || d != rec.chains[c.name] {
				changed = append(changed, c)
			}
		}
		sw.addPort(changed)
	}
	rt := &sw.final
	for _, r := range oldTop {
		if !slices.Contains(curTop, r) {
			rt.deleteRule(r)
		}
	}
	for _, r := range curTop {
		if slices.Contains(oldTop, r) {
			continue
		}
		if r.table == tableNAT && r.chain == ChainServices {
			rt.insertRule(r)
		} else {
			rt.appendRule(r)
		}
	}
	stale := make([]string, 0, len(oldChains))
	for name := range oldChains {
		if rec == nil || !hasChain(rec, name) {
			stale = append(stale, name)
		}
	}
	slices.SortFunc(stale, strings.Compare)
	for _, name := range stale {
		rt.deleteChain(tableNAT, name)
	}
	return rec
}

// hasChain reports whether rec has a chain of that name.
func hasChain(rec *committedPort, name string) bool {
	_, ok := rec.chains[name]
	return ok
}
