package nftables

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
)

// Errors the Fake returns (wrapped), as the kernel would refuse the same operations.
var (
	// ErrNotFound: the table, chain, set or element does not exist.
	ErrNotFound = errors.New("no such object")
	// ErrExists: the chain, set or element already exists (or a range overlaps another).
	ErrExists = errors.New("object exists")
	// ErrBusy: the chain is still referenced.
	ErrBusy = errors.New("object in use")
	// ErrInvalid: a malformed element or a reference to a missing chain or set.
	ErrInvalid = errors.New("invalid argument")
	// ErrFull: the set already holds as many elements as its size (the kernel's ENFILE).
	ErrFull = errors.New("set is full")
)

// Fake is an in-memory Conn. It applies a transaction atomically (all or nothing) with the
// kernel's checks: missing or duplicate objects, rules and elements referring to missing chains
// or sets, chains deleted while referenced, malformed or overlapping elements, full sets. Its state can
// be dumped (Dump) and traced (Trace). It is safe for concurrent use.
type Fake struct {
	mu     sync.Mutex
	tables map[tableID]*fakeTable
	last   *Transaction
}

// NewFake returns a Fake with no tables.
func NewFake() *Fake { return &Fake{tables: map[tableID]*fakeTable{}} }

type tableID struct {
	fam  *family
	name string
}

type fakeTable struct {
	chains map[string]*chain
	sets   map[string]*fakeSet
}

type fakeSet struct {
	spec  *setSpec
	elems map[string]element
}

// LastTransaction returns the last transaction applied successfully (nil before the first).
func (f *Fake) LastTransaction() *Transaction {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// Apply implements Conn.
func (f *Fake) Apply(tx *Transaction) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &fakeWork{tables: maps.Clone(f.tables), ownTables: map[tableID]bool{}, ownSets: map[*fakeSet]bool{}}
	for i, o := range tx.expanded().ops {
		if err := w.apply(o); err != nil {
			return fmt.Errorf("operation %d (%s): %w", i, o.lines()[0], err)
		}
	}
	f.tables = w.tables
	f.last = tx
	return nil
}

// fakeWork applies one transaction copy-on-write: tables and sets are copied when first
// changed, so the Fake's state is untouched until every operation succeeded.
type fakeWork struct {
	tables    map[tableID]*fakeTable
	ownTables map[tableID]bool
	ownSets   map[*fakeSet]bool
}

// table returns a writable copy of a table (nil if it does not exist).
func (w *fakeWork) table(id tableID) *fakeTable {
	t := w.tables[id]
	if t == nil || w.ownTables[id] {
		return t
	}
	t = &fakeTable{chains: maps.Clone(t.chains), sets: maps.Clone(t.sets)}
	w.tables[id] = t
	w.ownTables[id] = true
	return t
}

// set returns a writable copy of a set.
func (w *fakeWork) set(t *fakeTable, name string) *fakeSet {
	s := t.sets[name]
	if s == nil || w.ownSets[s] {
		return s
	}
	s = &fakeSet{spec: s.spec, elems: maps.Clone(s.elems)}
	t.sets[name] = s
	w.ownSets[s] = true
	return s
}

func (w *fakeWork) apply(o op) error {
	id := tableID{fam: o.fam, name: o.table}
	if o.kind == opAddTable {
		if w.tables[id] == nil {
			w.tables[id] = &fakeTable{chains: map[string]*chain{}, sets: map[string]*fakeSet{}}
			w.ownTables[id] = true
		}
		return nil
	}
	t := w.table(id)
	if t == nil {
		return fmt.Errorf("table %s %s: %w", o.fam.kw, o.table, ErrNotFound)
	}
	switch o.kind {
	case opDeleteTable:
		delete(w.tables, id)
	case opAddSet:
		if t.sets[o.set.name] != nil {
			return fmt.Errorf("set %s: %w", o.set.name, ErrExists)
		}
		s := &fakeSet{spec: o.set, elems: map[string]element{}}
		t.sets[o.set.name] = s
		w.ownSets[s] = true
	case opAddChain:
		return t.addChain(o.fam, o.chain)
	case opDeleteChain:
		return t.deleteChain(o.chain.name)
	case opAddElements, opDeleteElements:
		s := w.set(t, o.set.name)
		if s == nil {
			return fmt.Errorf("set %s: %w", o.set.name, ErrNotFound)
		}
		for _, e := range o.elems {
			if err := t.changeElement(s, e, o.kind == opDeleteElements); err != nil {
				return fmt.Errorf("element %s of %s: %w", renderElement(s.spec, e), o.set.name, err)
			}
		}
	}
	return nil
}

func (t *fakeTable) addChain(fam *family, c *chain) error {
	if t.chains[c.name] != nil {
		return fmt.Errorf("chain %s: %w", c.name, ErrExists)
	}
	for _, ru := range c.rules {
		for _, e := range ru.exprs {
			for _, ref := range exprRefs(e) {
				if !t.exists(ref) {
					return fmt.Errorf("chain %s rule %q refers to %s: %w", c.name, ru.render(fam), ref.name, ErrInvalid)
				}
			}
		}
	}
	t.chains[c.name] = c
	return nil
}

func (t *fakeTable) deleteChain(name string) error {
	if t.chains[name] == nil {
		return fmt.Errorf("chain %s: %w", name, ErrNotFound)
	}
	for _, c := range t.chains {
		for _, ru := range c.rules {
			for _, e := range ru.exprs {
				if slices.Contains(exprRefs(e), objRef{chain: true, name: name}) && c.name != name {
					return fmt.Errorf("chain %s is used by chain %s: %w", name, c.name, ErrBusy)
				}
			}
		}
	}
	for _, s := range t.sets {
		for _, e := range s.elems {
			if e.verd.chain == name {
				return fmt.Errorf("chain %s is used by an element of %s: %w", name, s.spec.name, ErrBusy)
			}
		}
	}
	delete(t.chains, name)
	return nil
}

// changeElement adds or deletes one element after the kernel's checks.
func (t *fakeTable) changeElement(s *fakeSet, e element, del bool) error {
	spec := s.spec
	if len(e.key) != keyLen(spec.key) || (spec.interval && len(e.keyEnd) != len(e.key)) {
		return fmt.Errorf("key length %d, want %d: %w", len(e.key), keyLen(spec.key), ErrInvalid)
	}
	id := e.key + e.keyEnd
	if del {
		if _, ok := s.elems[id]; !ok {
			return ErrNotFound
		}
		delete(s.elems, id)
		return nil
	}
	if _, ok := s.elems[id]; ok {
		return ErrExists
	}
	switch {
	case spec.verdictMap && (e.verd.kind == verdictNone || ((e.verd.kind == verdictGoto || e.verd.kind == verdictJump) && t.chains[e.verd.chain] == nil)):
		return fmt.Errorf("verdict %q: %w", e.verd, ErrInvalid)
	case spec.data != nil && len(e.value) != keyLen(spec.data):
		return fmt.Errorf("value length %d: %w", len(e.value), ErrInvalid)
	case spec.interval && overlaps(spec, s.elems, e):
		return fmt.Errorf("range overlaps another: %w", ErrExists)
	case spec.size > 0 && len(s.elems) >= spec.size:
		return fmt.Errorf("size %d: %w", spec.size, ErrFull)
	}
	s.elems[id] = e
	return nil
}

// overlaps reports whether an interval element overlaps an element of elems.
func overlaps(spec *setSpec, elems map[string]element, e element) bool {
	head := len(e.key) - spec.key[len(spec.key)-1].padded()
	for _, o := range elems {
		if o.key[:head] == e.key[:head] && o.key[head:] <= e.keyEnd[head:] && e.key[head:] <= o.keyEnd[head:] {
			return true
		}
	}
	return false
}

// objRef is a reference from a rule to a chain or a set.
type objRef struct {
	chain bool
	name  string
}

func (t *fakeTable) exists(ref objRef) bool {
	if ref.chain {
		return t.chains[ref.name] != nil
	}
	return t.sets[ref.name] != nil
}

// exprRefs returns the chains and sets an expression refers to.
func exprRefs(e ruleExpr) []objRef {
	switch e := e.(type) {
	case setMatch:
		return []objRef{{name: e.set}}
	case vmapLookup:
		return []objRef{{name: e.set}}
	case dnatMap:
		return []objRef{{name: e.set}}
	case dynUpdate:
		return []objRef{{name: e.set}}
	case verdictStmt:
		if e.v.kind == verdictGoto || e.v.kind == verdictJump {
			return []objRef{{chain: true, name: e.v.chain}}
		}
	}
	return nil
}

// snapshot returns the family's table, which must not be modified (nil if there is none).
func (f *Fake) snapshot(ipFamily v1.IPFamily, name string) *fakeTable {
	fam, err := familyOf(ipFamily)
	if err != nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tables[tableID{fam: fam, name: name}]
}

// Elements returns the elements of a set or map of nodeproxy's table of an IP family, rendered
// in nft syntax and sorted (nil if the table or set does not exist).
func (f *Fake) Elements(ipFamily v1.IPFamily, set string) []string {
	t := f.snapshot(ipFamily, TableName)
	if t == nil || t.sets[set] == nil {
		return nil
	}
	s := t.sets[set]
	out := make([]string, 0, len(s.elems))
	for _, e := range s.elems {
		out = append(out, renderElement(s.spec, e))
	}
	sort.Strings(out)
	return out
}

// Chains returns the names of the chains of nodeproxy's table of an IP family, sorted.
func (f *Fake) Chains(ipFamily v1.IPFamily) []string {
	t := f.snapshot(ipFamily, TableName)
	if t == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(t.chains))
}

// Dump returns the whole state as an nft script in a canonical order: per table (ip before
// ip6), the table, its sets and maps, its chains each followed by its rules, and then every
// element; names and elements sorted.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := slices.SortedFunc(maps.Keys(f.tables), func(a, b tableID) int {
		return cmpStrings(a.fam.kw+" "+a.name, b.fam.kw+" "+b.name)
	})
	var b bytes.Buffer
	for _, id := range ids {
		dumpTable(&b, id, f.tables[id])
	}
	return b.String()
}

func dumpTable(b *bytes.Buffer, id tableID, t *fakeTable) {
	tbl := id.fam.kw + " " + id.name
	fmt.Fprintf(b, "add table %s\n", tbl)
	setNames := slices.Sorted(maps.Keys(t.sets))
	for _, name := range setNames {
		s := t.sets[name]
		fmt.Fprintf(b, "add %s %s %s\n", s.spec.kind(), tbl, s.spec.render())
	}
	for _, name := range slices.Sorted(maps.Keys(t.chains)) {
		c := t.chains[name]
		fmt.Fprintf(b, "add chain %s %s%s\n", tbl, name, c.renderHook())
		for _, ru := range c.rules {
			fmt.Fprintf(b, "add rule %s %s %s\n", tbl, name, ru.render(id.fam))
		}
	}
	for _, name := range setNames {
		s := t.sets[name]
		lines := make([]string, 0, len(s.elems))
		for _, e := range s.elems {
			lines = append(lines, fmt.Sprintf("add element %s %s { %s }", tbl, name, renderElement(s.spec, e)))
		}
		sort.Strings(lines)
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
}

func cmpStrings(a, b string) int { return strings.Compare(a, b) }
