package nftables

import (
	"slices"

	"github.com/nodeproxy/nodeproxy/endpoints"
)

// unitRef identifies a unit: its kind and key.
type unitRef struct {
	kind string
	key  string
}

// unitOwners are the ports that want one unit, sorted by name; first is the one whose elements
// the kernel holds. The first owner is kept inline: almost every unit has exactly one.
type unitOwners struct {
	first *endpoints.ServicePortName
	more  []*endpoints.ServicePortName
}

// familyState is what nodeproxy committed to one family's table, kept in memory so that a sync
// never lists the kernel: the desired state of every service port (the inputs its elements are
// generated from), every unit with the ports that want it, and the dynamic chains with the
// number of ports using each.
//
// A sync calls setPort for each changed port and then flush, which writes the operations that
// bring the kernel in line, touching only the elements and chains the changed ports affected.
// If the transaction fails, the state no longer matches the kernel and must be thrown away
// (the next sync rebuilds the table).
type familyState struct {
	fc     *familyConfig
	ports  map[endpoints.ServicePortName]*portState
	names  map[endpoints.ServicePortName]*endpoints.ServicePortName
	owners map[unitRef]unitOwners
	// chainUsers counts the ports using each chain; kernelChains are the chains created.
	chainUsers   map[chainID]int
	kernelChains map[chainID]bool
	// fresh is true until the first flush: the kernel holds nothing yet, so nothing needs to
	// be remembered about what changed.
	fresh bool
	// touched holds, for each unit changed since the last flush, the state of the port whose
	// elements the kernel held for it (nil: the kernel held none).
	touched       map[unitRef]*portState
	touchedChains map[chainID]bool
	// limits are the sizes of the table's sets and an upper bound of their elements.
	limits setLimits
}

// newFamilyState returns the state of an empty table, sized for about ports service ports.
func newFamilyState(fc *familyConfig, ports int) *familyState {
	return &familyState{
		fc:            fc,
		ports:         make(map[endpoints.ServicePortName]*portState, ports),
		names:         make(map[endpoints.ServicePortName]*endpoints.ServicePortName, ports),
		owners:        make(map[unitRef]unitOwners, 2*ports),
		chainUsers:    map[chainID]int{},
		kernelChains:  map[chainID]bool{},
		fresh:         true,
		touched:       map[unitRef]*portState{},
		touchedChains: map[chainID]bool{},
		limits:        setLimits{counts: setCounts{}},
	}
}

// setPort records the desired state of one service port (nil: the port is gone).
func (s *familyState) setPort(name endpoints.ServicePortName, next *portState) {
	prev := s.ports[name]
	owner := s.names[name]
	if owner == nil {
		owner = &name
		s.names[name] = owner
	}
	for _, ch := range s.changedUnits(prev, next) {
		s.setOwner(ch.ref, owner, ch.wanted)
	}
	if prev != nil {
		s.useChains(prev.chains, -1)
	}
	if next != nil {
		s.useChains(next.chains, 1)
		s.ports[name] = next
	} else {
		delete(s.ports, name)
		delete(s.names, name)
	}
}

// unitChange is a unit whose elements a port changes: it now wants it (with other elements
// than before), or no longer does.
type unitChange struct {
	ref    unitRef
	wanted bool
}

// changedUnits returns the units whose elements differ between two states of a port (nil:
// absent). Elements are generated only when both states exist and their inputs differ.
func (s *familyState) changedUnits(prev, next *portState) []unitChange {
	var out []unitChange
	switch {
	case prev == nil && next == nil:
	case prev == nil:
		for _, ref := range next.units {
			out = append(out, unitChange{ref: ref, wanted: true})
		}
	case next == nil:
		for _, ref := range prev.units {
			out = append(out, unitChange{ref: ref})
		}
	case !sameInputs(prev, next):
		old := make(map[unitRef][]setElem, len(prev.units))
		for _, u := range prev.elements(s.fc) {
			old[u.ref()] = u.elems
		}
		for _, u := range next.elements(s.fc) {
			ref := u.ref()
			elems, had := old[ref]
			delete(old, ref)
			if !had || !slices.Equal(elems, u.elems) {
				out = append(out, unitChange{ref: ref, wanted: true})
			}
		}
		for ref := range old {
			out = append(out, unitChange{ref: ref})
		}
	}
	return out
}

// useChains adds delta users to chains.
func (s *familyState) useChains(chains []chainID, delta int) {
	for _, c := range chains {
		s.chainUsers[c] += delta
		s.touchedChains[c] = true
	}
}

// setOwner records (wanted) or forgets owner's wish for the unit ref. The first change of a
// unit since the last flush remembers whose elements the kernel holds for it: owners and the
// ports map still describe the kernel's state for it then (a port's own state is replaced
// only after its units are recorded, and a port whose unit did not change holds the same
// elements for it in both states).
func (s *familyState) setOwner(ref unitRef, owner *endpoints.ServicePortName, wanted bool) {
	cur, exists := s.owners[ref]
	if !s.fresh {
		if _, seen := s.touched[ref]; !seen {
			var held *portState
			if exists {
				held = s.ports[*cur.first]
			}
			s.touched[ref] = held
		}
	}
	if !exists || (len(cur.more) == 0 && cur.first == owner) { // the common cases
		if wanted {
			s.owners[ref] = unitOwners{first: owner}
		} else {
			delete(s.owners, ref)
		}
		return
	}
	owners := append([]*endpoints.ServicePortName{cur.first}, cur.more...)
	i, found := slices.BinarySearchFunc(owners, owner, func(o, n *endpoints.ServicePortName) int {
		return endpoints.CompareNames(*o, *n)
	})
	switch {
	case !wanted && found:
		owners = slices.Delete(owners, i, i+1)
	case wanted && !found:
		owners = slices.Insert(owners, i, owner)
	}
	if len(owners) == 0 {
		delete(s.owners, ref)
		return
	}
	s.owners[ref] = unitOwners{first: owners[0], more: owners[1:]}
}

// flush writes the operations for everything changed since the last flush into ops, and
// assumes they will be applied.
func (s *familyState) flush(ops *familyOps) {
	if s.fresh {
		s.flushAll(ops)
		s.fresh = false
	} else {
		units := unitCache{fc: s.fc, byPort: map[*portState][]unit{}}
		for ref, held := range s.touched {
			var have, want []setElem
			if held != nil {
				have = units.elems(held, ref)
			}
			if o, ok := s.owners[ref]; ok {
				want = units.elems(s.ports[*o.first], ref)
			}
			flushUnit(have, want, ops)
		}
		clear(s.touched)
	}
	for c := range s.touchedChains {
		used := s.chainUsers[c] > 0
		switch {
		case used && !s.kernelChains[c]:
			ops.chainAdds = append(ops.chainAdds, c)
			s.kernelChains[c] = true
		case !used && s.kernelChains[c]:
			ops.chainDels = append(ops.chainDels, c)
			delete(s.kernelChains, c)
		}
		if !used {
			delete(s.chainUsers, c)
		}
	}
	clear(s.touchedChains)
}

// flushAll writes every element of an empty table's state, to be generated when the
// transaction is applied: each port's elements of the units it is the first owner of. Ports
// are taken in name order, so that a transaction is the same whatever the map order.
func (s *familyState) flushAll(ops *familyOps) {
	names := make([]*endpoints.ServicePortName, 0, len(s.names))
	for _, n := range s.names {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b *endpoints.ServicePortName) int { return endpoints.CompareNames(*a, *b) })
	g := &portElements{fc: s.fc, ports: make([]ownedPort, 0, len(names))}
	for _, owner := range names {
		ps := s.ports[*owner]
		var skip []unitRef
		for _, ref := range ps.units {
			if s.owners[ref].first != owner {
				skip = append(skip, ref)
			}
		}
		g.add(ps, skip)
	}
	ops.all = g
}

// unitCache generates each port's elements once per flush.
type unitCache struct {
	fc     *familyConfig
	byPort map[*portState][]unit
}

// elems returns the elements ps generates for the unit ref (nil: none).
func (c unitCache) elems(ps *portState, ref unitRef) []setElem {
	units, ok := c.byPort[ps]
	if !ok {
		units = ps.elements(c.fc)
		c.byPort[ps] = units
	}
	for i := range units {
		if units[i].kind == ref.kind && units[i].key == ref.key {
			return units[i].elems
		}
	}
	return nil
}

// elemID identifies an element within a unit.
type elemID struct {
	set, key, keyEnd string
}

// flushUnit writes the element operations that turn a unit from have into want (nil: absent):
// elements that differ are deleted and added, the others are left alone.
func flushUnit(have, want []setElem, ops *familyOps) {
	if slices.Equal(have, want) {
		return
	}
	wanted := make(map[elemID]element, len(want))
	for _, e := range want {
		wanted[elemID{e.set, e.el.key, e.el.keyEnd}] = e.el
	}
	kept := make(map[elemID]bool, len(have))
	for _, e := range have {
		id := elemID{e.set, e.el.key, e.el.keyEnd}
		if w, ok := wanted[id]; ok && w.equal(e.el) {
			kept[id] = true
			continue
		}
		ops.deleteElement(e.set, e.el)
	}
	for _, e := range want {
		if !kept[elemID{e.set, e.el.key, e.el.keyEnd}] {
			ops.addElement(e.set, e.el)
		}
	}
}
