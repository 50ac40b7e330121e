package iptables

import (
	"bytes"
)

// tableText is one table's section of iptables-restore input. Lines are written in the order
// chain lines, rule deletions, rule additions, chain deletions, so that a deleted chain has
// lost every reference (deleted rules, flushed chains) before its -X line.
type tableText struct {
	chainLines []string // ":CHAIN - [0:0]": creates the chain, or flushes it (--noflush)
	deletes    []string // "-D CHAIN spec"
	rules      []string // "-A CHAIN spec" / "-I CHAIN spec"
	removals   []string // "-X CHAIN"
}

// empty reports whether the section changes nothing.
func (t *tableText) empty() bool {
	return len(t.chainLines)+len(t.deletes)+len(t.rules)+len(t.removals) == 0
}

// restoreText is one iptables-restore --noflush input: a filter and a nat section.
type restoreText struct {
	filter, nat tableText
}

// table returns the section of a table (filter or nat).
func (rt *restoreText) table(name string) *tableText {
	if name == tableFilter {
		return &rt.filter
	}
	return &rt.nat
}

// writeChain creates or flushes a chain and appends its rules.
func (rt *restoreText) writeChain(table string, c chainRules) {
	t := rt.table(table)
	t.chainLines = append(t.chainLines, ":"+c.name+" - [0:0]")
	for _, r := range c.rules {
		t.rules = append(t.rules, "-A "+c.name+" "+r)
	}
}

// flushChain creates or flushes a chain without adding rules.
func (rt *restoreText) flushChain(table, chain string) {
	t := rt.table(table)
	t.chainLines = append(t.chainLines, ":"+chain+" - [0:0]")
}

// deleteChain flushes and deletes a chain.
func (rt *restoreText) deleteChain(table, chain string) {
	rt.flushChain(table, chain)
	t := rt.table(table)
	t.removals = append(t.removals, "-X "+chain)
}

// appendRule appends a rule to the end of its chain.
func (rt *restoreText) appendRule(r topRule) {
	t := rt.table(r.table)
	t.rules = append(t.rules, "-A "+r.chain+" "+r.spec)
}

// insertRule inserts a rule at the top of its chain (used for nat KUBE-SERVICES, which must
// keep its NodePort jumps last).
func (rt *restoreText) insertRule(r topRule) {
	t := rt.table(r.table)
	t.rules = append(t.rules, "-I "+r.chain+" "+r.spec)
}

// deleteRule deletes one copy of a rule.
func (rt *restoreText) deleteRule(r topRule) {
	t := rt.table(r.table)
	t.deletes = append(t.deletes, "-D "+r.chain+" "+r.spec)
}

// ruleLines returns how many rules the input adds to each table.
func (rt *restoreText) ruleLines() (filter, nat int) { return len(rt.filter.rules), len(rt.nat.rules) }

// empty reports whether the input changes nothing (no iptables-restore is needed).
func (rt *restoreText) empty() bool { return rt.filter.empty() && rt.nat.empty() }

// bytes renders the input; sections that change nothing are left out, and an input that
// changes nothing renders as nil.
func (rt *restoreText) bytes() []byte {
	if rt.empty() {
		return nil
	}
	var buf bytes.Buffer
	for _, sec := range []struct {
		name string
		t    *tableText
	}{{tableFilter, &rt.filter}, {tableNAT, &rt.nat}} {
		if sec.t.empty() {
			continue
		}
		buf.WriteString("*" + sec.name + "\n")
		for _, lines := range [][]string{sec.t.chainLines, sec.t.deletes, sec.t.rules, sec.t.removals} {
			for _, l := range lines {
				buf.WriteString(l)
				buf.WriteByte('\n')
			}
		}
		buf.WriteString("COMMIT\n")
	}
	return buf.Bytes()
}
