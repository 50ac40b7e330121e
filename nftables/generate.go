package nftables

import "slices"

// A new table's elements (~120,000 at 10,000 Services x 10 endpoints) are not copied into the
// transaction: it holds a portElements, which generates them from the ports' states when the
// transaction is applied, a bounded part at a time (stages, or messages of one batch). The
// whole list of elements thus never exists in memory at once; the ports' states are never
// modified, so the transaction can be generated again later (Fake, logs, String).

// generateChunk bounds the elements generated at once when a transaction is applied in one
// batch.
const generateChunk = 4096

// ownedPort is a port whose elements a portElements generates.
type ownedPort struct {
	ps *portState
	// skip are the units of the port whose elements the kernel takes from another port (the
	// first owner of a unit several ports want); nil almost always.
	skip []unitRef
	// count is the number of elements generated.
	count int
}

// portElements generates the elements of a list of ports, as element additions.
type portElements struct {
	fc    *familyConfig
	ports []ownedPort
	count int
}

// add appends a port whose elements, except those of skip, are to be generated.
func (g *portElements) add(ps *portState, skip []unitRef) {
	count := int(ps.elementCount)
	if len(skip) > 0 {
		count = 0
		for _, u := range ps.elements(g.fc) {
			if !slices.Contains(skip, u.ref()) {
				count += len(u.elems)
			}
		}
	}
	g.ports = append(g.ports, ownedPort{ps: ps, skip: skip, count: count})
	g.count += count
}

// size is the number of elements generated (0 for nil).
func (g *portElements) size() int {
	if g == nil {
		return 0
	}
	return g.count
}

// split returns the ports in consecutive parts of at most n elements each; a port with more
// than n elements is a part of its own (a port's elements are never split).
func (g *portElements) split(n int) []*portElements {
	var out []*portElements
	cur := &portElements{fc: g.fc}
	for _, p := range g.ports {
		if cur.count > 0 && cur.count+p.count > n {
			out = append(out, cur)
			cur = &portElements{fc: g.fc}
		}
		cur.ports = append(cur.ports, p)
		cur.count += p.count
	}
	if len(cur.ports) > 0 {
		out = append(out, cur)
	}
	return out
}

// ops generates the elements as one element addition per set (setOps).
func (g *portElements) ops() []op {
	var units []unit
	counts := map[string]int{}
	for _, p := range g.ports {
		for _, u := range p.ps.elements(g.fc) {
			if p.skip != nil && slices.Contains(p.skip, u.ref()) {
				continue
			}
			units = append(units, u)
			for _, e := range u.elems {
				counts[e.set]++
			}
		}
	}
	bySet := make(map[string][]element, len(counts))
	for set, n := range counts {
		bySet[set] = make([]element, 0, n)
	}
	for _, u := range units {
		for _, e := range u.elems {
			bySet[e.set] = append(bySet[e.set], e.el)
		}
	}
	return setOps(g.fc.fam, opAddElements, bySet)
}

// expanded returns the transaction with every generated element addition replaced by the
// element additions it generates.
func (t *Transaction) expanded() *Transaction {
	out := &Transaction{ops: make([]op, 0, len(t.ops))}
	for _, o := range t.ops {
		if o.gen != nil {
			out.ops = append(out.ops, o.gen.ops()...)
		} else {
			out.ops = append(out.ops, o)
		}
	}
	return out
}
