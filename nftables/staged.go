package nftables

import (
	"errors"
	"fmt"
	"math"
	"slices"

	gnft "github.com/google/nftables"
	"k8s.io/klog/v2"
)

// A cold start builds a table of ~120,000 elements at 10,000 Services x 10 endpoints. Sent as
// one batch, the whole encoded batch (~5.5 MB) must be in memory at once, since a batch is one
// sendmsg. On a node without our table (nor upstream's), the table can instead be built in
// stages, marshalling the next while the kernel applies the current one, because
// nothing reaches a table's chains before it has base chains: the first batch creates the
// table, its sets and its regular chains; the next ones add the elements, a bounded number
// per batch; the last one adds the base chains, which hooks the complete table to the
// network stack in one step. Packets thus see no table, then the whole table.

// stagedElementsPerBatch bounds the elements of one staged batch (a variable for tests).
var stagedElementsPerBatch = 16384

// stager is implemented by Conns that can apply a table-creating transaction in stages.
type stager interface {
	// ApplyStaged applies tx in stages when none of the tables tx replaces exists in the
	// kernel, and reports true; otherwise it applies nothing and reports false.
	ApplyStaged(tx *Transaction) (bool, error)
}

// createsTables reports whether tx is a table setup (writeTableSetup): it starts by
// replacing tables, so it holds everything the new tables contain.
func createsTables(tx *Transaction) bool {
	return len(tx.ops) > 0 && tx.ops[0].kind == opAddTable
}

// hooksLast returns a table-creating transaction with its base chains moved to the end, the
// order stages applies it in; a table built in one batch is then listed (`nft list`, which
// shows chains in creation order) exactly as one built in stages.
func hooksLast(tx *Transaction) *Transaction {
	out := &Transaction{ops: make([]op, 0, len(tx.ops))}
	for _, stage := range stages(tx, math.MaxInt) {
		out.ops = append(out.ops, stage.ops...)
	}
	return out
}

// stages splits a table-creating transaction: everything but elements and base chains, then
// the elements in batches of at most perBatch (generated elements: of whole ports, so a port
// with more elements is a batch of its own), then the base chains with their rules.
func stages(tx *Transaction, perBatch int) []*Transaction {
	setup, hooks := &Transaction{}, &Transaction{}
	var elementOps []op
	for _, o := range tx.ops {
		switch {
		case o.kind == opAddElements || o.kind == opDeleteElements:
			elementOps = append(elementOps, o)
		case o.kind == opAddChain && o.chain.base != nil:
			hooks.add(o)
		default:
			setup.add(o)
		}
	}
	out := []*Transaction{setup}
	cur, n := &Transaction{}, 0
	for _, o := range elementOps {
		if o.gen != nil { // generated elements: parts of whole ports, a stage each
			if !cur.Empty() {
				out, cur, n = append(out, cur), &Transaction{}, 0
			}
			for _, part := range o.gen.split(perBatch) {
				g := o
				g.gen = part
				out = append(out, &Transaction{ops: []op{g}})
			}
			continue
		}
		for start := 0; start < len(o.elems); {
			take := min(perBatch-n, len(o.elems)-start)
			part := o
			part.elems = o.elems[start : start+take]
			cur.add(part)
			start, n = start+take, n+take
			if n == perBatch {
				out, cur, n = append(out, cur), &Transaction{}, 0
			}
		}
	}
	if !cur.Empty() {
		out = append(out, cur)
	}
	return append(out, hooks)
}

// ApplyStaged implements stager. When a stage fails, the tables built so far are deleted
// (best effort), so that what the kernel holds is what it held before. When the tables
// cannot be listed, it applies nothing (the caller sends one batch).
func (c *netlinkConn) ApplyStaged(tx *Transaction) (bool, error) {
	exist, err := c.replacedTablesExist(tx)
	if err != nil {
		klog.V(2).InfoS("Not building the table in stages", "err", err)
		return false, nil
	}
	if exist {
		return false, nil
	}
	if err := c.applyPipelined(stages(tx, stagedElementsPerBatch)); err != nil {
		err = fmt.Errorf("building the table in stages, %w", err)
		if cleanupErr := c.Apply(deleteCreatedTables(tx)); cleanupErr != nil {
			err = errors.Join(err, fmt.Errorf("deleting the partly built table: %w", cleanupErr))
		}
		return true, err
	}
	return true, nil
}

// preparedStage is a stage encoded and ready to send.
type preparedStage struct {
	b   *rawBatch
	err error
}

// applyPipelined applies the stages in order, each as one batch, marshalling the next stage
// while the kernel processes the current one. It stops at the first failure.
func (c *netlinkConn) applyPipelined(list []*Transaction) error {
	ready := make(chan preparedStage)
	stop := make(chan struct{})
	go func() {
		defer close(ready)
		for _, tx := range list {
			b, err := encodeTransaction(tx)
			st := preparedStage{b: b, err: err}
			select {
			case ready <- st:
			case <-stop:
				return
			}
			if st.err != nil {
				return
			}
		}
	}()
	defer func() {
		close(stop)
		for range ready { // let the marshalling goroutine end
		}
	}()
	i := 0
	for st := range ready {
		i++
		err := st.err
		if err == nil {
			err = c.sendBatch(st.b)
		}
		if err != nil {
			return fmt.Errorf("stage %d of %d: %w", i, len(list), err)
		}
	}
	return nil
}

// replacedTablesExist reports whether the kernel holds any table tx deletes.
func (c *netlinkConn) replacedTablesExist(tx *Transaction) (bool, error) {
	opts := []gnft.ConnOption{}
	if c.netNSFd != 0 {
		opts = append(opts, gnft.WithNetNSFd(c.netNSFd))
	}
	conn, err := gnft.New(opts...)
	if err != nil {
		return false, fmt.Errorf("opening nftables netlink connection: %w", err)
	}
	listed := map[*family][]string{}
	for _, o := range tx.ops {
		if o.kind != opDeleteTable {
			continue
		}
		names, ok := listed[o.fam]
		if !ok {
			tables, err := conn.ListTablesOfFamily(o.fam.table)
			if err != nil {
				return false, fmt.Errorf("listing %s tables: %w", o.fam.ipFamily, err)
			}
			for _, t := range tables {
				names = append(names, t.Name)
			}
			listed[o.fam] = names
		}
		if slices.Contains(names, o.table) {
			return true, nil
		}
	}
	return false, nil
}

// deleteCreatedTables returns a transaction deleting the tables tx creates (each added
// first, so that the deletion succeeds whether or not it was created).
func deleteCreatedTables(tx *Transaction) *Transaction {
	out := &Transaction{}
	for _, o := range tx.ops {
		if o.kind == opAddTable && !slices.ContainsFunc(out.ops, func(d op) bool { return d.fam == o.fam && d.table == o.table }) {
			out.add(op{kind: opAddTable, fam: o.fam, table: o.table})
			out.add(op{kind: opDeleteTable, fam: o.fam, table: o.table})
		}
	}
	return out
}
