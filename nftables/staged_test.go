package nftables

import (
	"cmp"
	"slices"
	"strings"
	"testing"
)

// creationTx returns the transaction of a first full sync of addWorld's state.
func creationTx(t *testing.T) *Transaction {
	t.Helper()
	env := newTestEnv(t, testConfig())
	env.rec = &recordingConn{conn: NewFake()}
	p, err := NewWithConn(testConfig(), env.rec)
	if err != nil {
		t.Fatal(err)
	}
	env.p = p
	addWorld(env)
	env.sync(true)
	if env.rec.last == nil || !createsTables(env.rec.last) {
		t.Fatal("the first sync did not create the table")
	}
	return env.rec.last
}

func TestStagesSplitATableCreation(t *testing.T) {
	tx := creationTx(t)
	var wantElems []element
	nonElementOps := 0
	for _, o := range tx.expanded().ops {
		if o.kind == opAddElements {
			wantElems = append(wantElems, o.elems...)
		} else {
			nonElementOps++
		}
	}
	const perBatch = 7
	got := stages(tx, perBatch)
	if len(got) < 4 {
		t.Fatalf("%d stages for %d elements in batches of %d", len(got), len(wantElems), perBatch)
	}
	setup, hooks := got[0], got[len(got)-1]
	for _, o := range setup.ops {
		if o.kind == opAddElements || (o.kind == opAddChain && o.chain.base != nil) {
			t.Errorf("the first stage holds %v of %s: it must hold no elements and no base chain", o.kind, o.chain.name)
		}
	}
	for _, o := range hooks.ops {
		if o.kind != opAddChain || o.chain.base == nil {
			t.Errorf("the last stage holds an operation other than a base chain: %v", o.lines())
		}
	}
	if len(hooks.ops) == 0 {
		t.Error("the last stage adds no base chain")
	}
	var gotElems []element
	for i, stage := range got[1 : len(got)-1] {
		n, ports := 0, 0
		for _, o := range stage.ops {
			if o.kind != opAddElements {
				t.Errorf("stage %d holds a %v operation among the elements", i+2, o.kind)
			}
			n += len(o.elems) + o.gen.size()
			if o.gen != nil {
				ports += len(o.gen.ports)
			}
		}
		for _, o := range stage.expanded().ops {
			gotElems = append(gotElems, o.elems...)
		}
		if n == 0 || (n > perBatch && ports > 1) { // a port's elements are never split
			t.Errorf("stage %d holds %d elements of %d ports, want 1..%d (or one port)", i+2, n, ports, perBatch)
		}
	}
	sortElements(gotElems)
	sortElements(wantElems)
	if !slices.Equal(gotElems, wantElems) {
		t.Errorf("the stages hold %d elements, the transaction %d (or in another order)", len(gotElems), len(wantElems))
	}
	if n := len(setup.ops) + len(hooks.ops); n != nonElementOps {
		t.Errorf("the first and last stages hold %d operations, the transaction %d besides elements", n, nonElementOps)
	}
}

// TestKernelStagedCreation builds addWorld's table in many small stages on a fresh node: the
// result is the golden table, built over several commits; over an existing table the
// same transaction is not staged.
func TestKernelStagedCreation(t *testing.T) {
	old := stagedElementsPerBatch
	stagedElementsPerBatch = 5
	t.Cleanup(func() { stagedElementsPerBatch = old })
	env, ns := newKernelEnv(t, testConfig())
	addWorld(env)
	gens := &generationQuerier{netNSFd: ns.fd()}
	defer gens.close()
	before, err := gens.current()
	if err != nil {
		t.Fatal(err)
	}
	env.sync(true)
	after, err := gens.current()
	if err != nil {
		t.Fatal(err)
	}
	elementStages := len(stages(env.rec.last, 5)) - 2
	if elementStages < 3 || after-before != uint32(elementStages+2) {
		t.Errorf("the first sync made %d commits, want %d (setup, %d stages of elements by 5, base chains)", after-before, elementStages+2, elementStages)
	}
	checkGolden(t, "ipv4-world.golden", ns.nft(t, "list", "ruleset"))

	staged, err := NewNetlinkConn(ns.fd()).(stager).ApplyStaged(env.rec.last)
	if staged || err != nil {
		t.Errorf("ApplyStaged over an existing table = %t, %v; want false, nil", staged, err)
	}
}

// TestKernelFailedStageRemovesTheTable: when a stage is refused, the partly built table is
// deleted, so the node holds no table that a later sync would take for ours.
func TestKernelFailedStageRemovesTheTable(t *testing.T) {
	tx := creationTx(t)
	broken := tx.expanded()
	for i, o := range broken.ops {
		if o.kind == opAddElements && o.set.verdictMap {
			elems := slices.Clone(o.elems)
			elems[len(elems)-1].verd = verdict{kind: verdictGoto, chain: "no-such-chain"}
			broken.ops[i].elems = elems
			break
		}
	}
	ns := newTestNetns(t)
	staged, err := NewNetlinkConn(ns.fd()).(stager).ApplyStaged(broken)
	if !staged || err == nil {
		t.Fatalf("ApplyStaged of a transaction the kernel refuses = %t, %v; want true and an error", staged, err)
	}
	if out := ns.nft(t, "list", "tables"); out != "" {
		t.Errorf("tables left after the failed stage: %q", out)
	}
}

// sortElements sorts elements by each of their fields.
func sortElements(els []element) {
	slices.SortFunc(els, func(a, b element) int {
		return cmp.Or(strings.Compare(a.key, b.key), strings.Compare(a.keyEnd, b.keyEnd), strings.Compare(a.value, b.value),
			strings.Compare(a.comment, b.comment), strings.Compare(a.verd.chain, b.verd.chain), cmp.Compare(a.verd.kind, b.verd.kind))
	})
}
