package nftables

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// opKind is the kind of one transaction operation.
type opKind uint8

const (
	opAddTable opKind = iota + 1
	opDeleteTable
	opAddSet
	opAddChain
	opDeleteChain
	opAddElements
	opDeleteElements
)

// op is one operation of a transaction.
type op struct {
	kind  opKind
	fam   *family
	table string
	// set is the set declared (opAddSet) or whose elements change (element operations).
	set *setSpec
	// chain is the chain created with its rules (opAddChain) or deleted (opDeleteChain).
	chain *chain
	elems []element
	// gen, in an element addition without elems, generates its elements (generate.go).
	gen *portElements
}

// Transaction is one atomic batch of operations on nftables state: the kernel applies all of
// them or none. Operations are ordered so that every reference is valid when it is made
// (sets and chains before what refers to them; references removed before their targets).
type Transaction struct {
	ops []op
}

// Empty reports whether the transaction does nothing.
func (t *Transaction) Empty() bool { return len(t.ops) == 0 }

// Operations returns the number of operations, counting each element added or deleted.
func (t *Transaction) Operations() int {
	n := 0
	for _, o := range t.ops {
		if o.kind == opAddElements || o.kind == opDeleteElements {
			n += len(o.elems) + o.gen.size()
		} else {
			n++
		}
	}
	return n
}

func (t *Transaction) add(o op) { t.ops = append(t.ops, o) }

// String renders the transaction in nft syntax, one operation per line.
func (t *Transaction) String() string {
	var b strings.Builder
	for _, o := range t.ops {
		for _, line := range o.lines() {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// lines renders one operation (an element operation gives one line per element).
func (o op) lines() []string {
	tbl := fmt.Sprintf("%s %s", o.fam.kw, o.table)
	switch o.kind {
	case opAddTable:
		return []string{"add table " + tbl}
	case opDeleteTable:
		return []string{"delete table " + tbl}
	case opAddSet:
		return []string{fmt.Sprintf("add %s %s %s", o.set.kind(), tbl, o.set.render())}
	case opAddChain:
		lines := []string{fmt.Sprintf("add chain %s %s%s", tbl, o.chain.name, o.chain.renderHook())}
		for _, ru := range o.chain.rules {
			lines = append(lines, fmt.Sprintf("add rule %s %s %s", tbl, o.chain.name, ru.render(o.fam)))
		}
		return lines
	case opDeleteChain:
		return []string{fmt.Sprintf("delete chain %s %s", tbl, o.chain.name)}
	}
	if o.gen != nil {
		var lines []string
		for _, g := range o.gen.ops() {
			lines = append(lines, g.lines()...)
		}
		return lines
	}
	verb := "add"
	if o.kind == opDeleteElements {
		verb = "delete"
	}
	lines := make([]string, len(o.elems))
	for i, e := range o.elems {
		lines[i] = fmt.Sprintf("%s element %s %s { %s }", verb, tbl, o.set.name, renderElement(o.set, e))
	}
	return lines
}

// kind is "set" or "map".
func (s *setSpec) kind() string {
	if s.verdictMap || s.data != nil {
		return "map"
	}
	return "set"
}

// render renders the set declaration: name { type ...; flags ...; }.
func (s *setSpec) render() string {
	names := func(types []fieldType) string {
		parts := make([]string, len(types))
		for i, t := range types {
			parts[i] = t.datatype().Name
		}
		return strings.Join(parts, " . ")
	}
	typ := names(s.key)
	switch {
	case s.verdictMap:
		typ += " : verdict"
	case s.data != nil:
		typ += " : " + names(s.data)
	}
	var flags []string
	if s.interval {
		flags = append(flags, "interval")
	}
	if s.dynamic {
		flags = append(flags, "dynamic", "timeout")
	}
	out := fmt.Sprintf("%s { type %s ;", s.name, typ)
	if len(flags) > 0 {
		out += " flags " + strings.Join(flags, ",") + " ;"
	}
	if s.comment != "" {
		out += fmt.Sprintf(" comment %q ;", s.comment)
	}
	return out + " }"
}

// renderHook renders a base chain's hook declaration ("" for a regular chain).
func (c *chain) renderHook() string {
	if c.base == nil {
		return ""
	}
	return fmt.Sprintf(" { type %s hook %s priority %d ; }", c.base.typ, c.base.hook, c.base.priority)
}

// setOps returns one element operation of kind per set of fam with elements in bySet, in the
// family's set order. The elements of an interval set are sorted: `nft list` shows ranges in
// insertion order, which must not depend on map order.
func setOps(fam *family, kind opKind, bySet map[string][]element) []op {
	var out []op
	for _, spec := range fam.sets {
		els := bySet[spec.name]
		if len(els) == 0 {
			continue
		}
		if spec.interval {
			slices.SortFunc(els, func(a, b element) int { return strings.Compare(a.key, b.key) })
		}
		out = append(out, op{kind: kind, fam: fam, table: TableName, set: spec, elems: els})
	}
	return out
}

// familyOps collects one family's incremental operations before they are ordered into a
// transaction.
type familyOps struct {
	fc        *familyConfig
	chainAdds []chainID
	chainDels []chainID
	dels      map[string][]element
	adds      map[string][]element
	// all, when set, generates the elements of a new table (added after adds).
	all *portElements
}

func newFamilyOps(fc *familyConfig) *familyOps {
	return &familyOps{fc: fc, dels: map[string][]element{}, adds: map[string][]element{}}
}

func (o *familyOps) addElement(set string, e element) { o.adds[set] = append(o.adds[set], e) }

func (o *familyOps) deleteElement(set string, e element) { o.dels[set] = append(o.dels[set], e) }

// appendTo appends the operations to tx in a safe order: new chains (lowest level first),
// element deletions, element additions, then chain deletions (highest level first). Elements
// are in no particular order (the kernel does not care; sorting 100,000 would cost more),
// except ranges.
func (o *familyOps) appendTo(tx *Transaction) {
	fam := o.fc.fam
	byLevel := func(a, b chainID) int {
		return cmp.Or(cmp.Compare(a.level(), b.level()), strings.Compare(a.name(), b.name()))
	}
	slices.SortFunc(o.chainAdds, byLevel)
	for _, c := range o.chainAdds {
		ch := c.build(o.fc)
		tx.add(op{kind: opAddChain, fam: fam, table: TableName, chain: &ch})
	}
	for _, kind := range []opKind{opDeleteElements, opAddElements} {
		src := o.dels
		if kind == opAddElements {
			src = o.adds
		}
		tx.ops = append(tx.ops, setOps(fam, kind, src)...)
	}
	if o.all != nil && o.all.size() > 0 {
		tx.add(op{kind: opAddElements, fam: fam, table: TableName, gen: o.all})
	}
	slices.SortFunc(o.chainDels, func(a, b chainID) int { return byLevel(b, a) })
	for _, c := range o.chainDels {
		tx.add(op{kind: opDeleteChain, fam: fam, table: TableName, chain: &chain{name: c.name()}})
	}
}
