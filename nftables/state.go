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

// unitOwner is one service port's wish for a unit.
type unitOwner struct {
	name  *endpoints.ServicePortName
	elems []setElem
}

// unitOwners are the ports that want one unit, sorted by name; first is the one the kernel
// holds. The first owner is kept inline: almost every unit has exactly one.
type unitOwners struct {
	first unitOwner
	more  []unitOwner
}

// before is a unit as the kernel held it before the current sync touched it.
type before struct {
	elems   []setElem
	present bool
}

// familyState is what nodeproxy committed to one family's table, kept in memory so that a sync
// never lists the kernel: the desired state of every service port, every unit with the ports
// that want it, and the dynamic chains with the number of ports using each.
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
	fresh         bool
	touched       map[unitRef]before
	touchedChains map[chainID]bool
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
		touched:       map[unitRef]before{},
		touchedChains: map[chainID]bool{},
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
	var prevUnits map[unitRef][]setElem
	if prev != nil {
		prevUnits = make(map[unitRef][]setElem, len(prev.units))
		for _, u := range prev.units {
			prevUnits[unitRef{kind: u.kind, key: u.key}] = u.elems
		}
		s.useChains(prev.chains, -1)
	}
	if next != nil {
		for _, u := range next.units {
			ref := unitRef{kind: u.kind, key: u.key}
			if old, ok := prevUnits[ref]; ok {
				delete(prevUnits, ref)
				if slices.Equal(old, u.elems) {
					continue
				}
			}
			s.setOwner(ref, owner, u.elems)
		}
		s.useChains(next.chains, 1)
		s.ports[name] = next
	} else {
		delete(s.ports, name)
		delete(s.names, name)
	}
	for ref := range prevUnits {
		s.setOwner(ref, owner, nil)
	}
}

// useChains adds delta users to chains.
func (s *familyState) useChains(chains []chainID, delta int) {
	for _, c := range chains {
		s.chainUsers[c] += delta
		s.touchedChains[c] = true
	}
}

// setOwner records (elems) or forgets (nil) owner's wish for the unit ref.
func (s *familyState) setOwner(ref unitRef, owner *endpoints.ServicePortName, elems []setElem) {
	cur, exists := s.owners[ref]
	if !s.fresh {
		if _, seen := s.touched[ref]; !seen {
			s.touched[ref] = before{elems: cur.first.elems, present: exists}
		}
	}
	if !exists || (len(cur.more) == 0 && cur.first.name == owner) { // the common cases
		if elems == nil {
			delete(s.owners, ref)
		} else {
			s.owners[ref] = unitOwners{first: unitOwner{name: owner, elems: elems}}
		}
		return
	}
	owners := append([]unitOwner{cur.first}, cur.more...)
	i, found := slices.BinarySearchFunc(owners, owner, func(o unitOwner, n *endpoints.ServicePortName) int {
		return endpoints.CompareNames(*o.name, *n)
	})
	switch {
	case elems == nil && found:
		owners = slices.Delete(owners, i, i+1)
	case elems != nil && found:
		owners[i].elems = elems
	case elems != nil:
		owners = slices.Insert(owners, i, unitOwner{name: owner, elems: elems})
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
		ops.reserve(s.owners)
		for _, owners := range s.owners {
			for _, e := range owners.first.elems {
				ops.addElement(e.set, e.el)
			}
		}
		s.fresh = false
	} else {
		for ref, b := range s.touched {
			flushUnit(b.elems, s.owners[ref].first.elems, ops)
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
