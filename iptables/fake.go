package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
)

// builtinChains are the built-in chains of each table the Fake knows, in kernel order.
var builtinChains = map[string][]string{
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	tableMangle: {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":       {"PREROUTING", "OUTPUT"},
}

// standardTargets are the targets that are not chains.
var standardTargets = map[string]bool{
	"ACCEPT": true, "DROP": true, "REJECT": true, "RETURN": true, "DNAT": true, "SNAT": true,
	"MASQUERADE": true, "MARK": true, "CONNMARK": true, "REDIRECT": true, "LOG": true,
	"NOTRACK": true, "CT": true, "QUEUE": true, "NFQUEUE": true, "TPROXY": true,
}

// Fake is an in-memory Executor for one IP family: iptables-restore input is parsed and applied
// to tables of chains of rules with --noflush semantics (a ":CHAIN" line creates or flushes
// the chain; -A, -I, -D, -N, -F, -X and -P work as in iptables; each table section applies at
// its COMMIT, or not at all on an error), and the other operations work on the same state.
// It is safe for concurrent use.
type Fake struct {
	mu       sync.Mutex
	family   v1.IPFamily
	tables   map[string]*fakeTable
	restores []string
	failNext error
}

// fakeTable is one table: chains by name.
type fakeTable struct {
	chains map[string]*fakeChain
}

// fakeChain is one chain; rules are canonical specs (everything after "-A CHAIN ").
type fakeChain struct {
	builtin bool
	policy  string
	rules   []string
}

var _ Executor = (*Fake)(nil)

// NewFake returns a Fake holding empty filter, nat, mangle and raw tables.
func NewFake(family v1.IPFamily) *Fake {
	f := &Fake{family: family, tables: map[string]*fakeTable{}}
	for table := range builtinChains {
		f.tables[table] = newFakeTable(table)
	}
	return f
}

// newFakeTable returns a table with its built-in chains (policy ACCEPT).
func newFakeTable(table string) *fakeTable {
	t := &fakeTable{chains: map[string]*fakeChain{}}
	for _, c := range builtinChains[table] {
		t.chains[c] = &fakeChain{builtin: true, policy: "ACCEPT"}
	}
	return t
}

// clone returns a deep copy of t.
func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{chains: make(map[string]*fakeChain, len(t.chains))}
	for name, ch := range t.chains {
		cp := *ch
		cp.rules = slices.Clone(ch.rules)
		c.chains[name] = &cp
	}
	return c
}

// FailNextRestore makes the next Restore fail with err without changing anything.
func (f *Fake) FailNextRestore(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// Restores returns every Restore input so far, oldest first.
func (f *Fake) Restores() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.restores)
}

// Rules returns the rules of a chain (canonical specs), or nil when it does not exist.
func (f *Fake) Rules(table, chain string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.tables[table]; t != nil && t.chains[chain] != nil {
		return slices.Clone(t.chains[chain].rules)
	}
	return nil
}

// Restore implements Executor.
func (f *Fake) Restore(_ context.Context, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores = append(f.restores, string(data))
	if err := f.failNext; err != nil {
		f.failNext = nil
		return fmt.Errorf("fake iptables-restore: %w", err)
	}
	var cur *fakeTable
	curName := ""
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		var err error
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			if cur != nil {
				err = fmt.Errorf("table %s has no COMMIT", curName)
				break
			}
			curName = line[1:]
			cur = f.table(curName).clone()
		case cur == nil:
			err = fmt.Errorf("not in a table")
		case line == "COMMIT":
			f.tables[curName], cur = cur, nil
		case strings.HasPrefix(line, ":"):
			err = cur.chainLine(line[1:])
		default:
			var args []string
			if args, err = splitArgs(line); err == nil {
				err = cur.apply(args)
			}
		}
		if err != nil {
			return fmt.Errorf("fake iptables-restore: line %d failed (%q): %w", i+1, line, err)
		}
	}
	if cur != nil {
		return fmt.Errorf("fake iptables-restore: table %s has no COMMIT", curName)
	}
	return nil
}

// table returns a table, creating an empty one (with built-in chains if known).
func (f *Fake) table(name string) *fakeTable {
	t := f.tables[name]
	if t == nil {
		t = newFakeTable(name)
		f.tables[name] = t
	}
	return t
}

// chainLine applies ":NAME POLICY [counters]": sets a built-in chain's policy, creates a user
// chain, or flushes an existing one (--noflush semantics).
func (t *fakeTable) chainLine(rest string) error {
	f := strings.Fields(rest)
	if len(f) < 2 {
		return fmt.Errorf("bad chain line")
	}
	name, policy := f[0], f[1]
	ch := t.chains[name]
	switch {
	case ch != nil && ch.builtin:
		if policy != "-" {
			ch.policy = policy
		}
	case ch != nil:
		ch.rules = nil
	case policy != "-":
		return fmt.Errorf("chain %s is not built-in but has policy %s", name, policy)
	default:
		t.chains[name] = &fakeChain{policy: "-"}
	}
	return nil
}

// apply runs one iptables command (without "-t TABLE") on the table.
func (t *fakeTable) apply(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("empty command")
	}
	cmd, rest := args[0], args[1:]
	chainName := ""
	if len(rest) > 0 {
		chainName = rest[0]
	}
	switch cmd {
	case "-A", "--append":
		return t.insert(chainName, -1, rest[1:])
	case "-I", "--insert":
		pos := 1
		if len(rest) > 1 {
			if n, ok := parseRuleNum(rest[1]); ok {
				pos, rest = n, rest[1:]
			}
		}
		return t.insert(chainName, pos-1, rest[1:])
	case "-D", "--delete":
		return t.delete(chainName, rest[1:])
	case "-N", "--new-chain":
		if t.chains[chainName] != nil {
			return fmt.Errorf("chain %s already exists", chainName)
		}
		t.chains[chainName] = &fakeChain{policy: "-"}
		return nil
	case "-F", "--flush":
		return t.flush(chainName)
	case "-X", "--delete-chain":
		return t.deleteChains(chainName)
	case "-P", "--policy":
		if ch := t.chains[chainName]; ch != nil && ch.builtin && len(rest) > 1 {
			ch.policy = rest[1]
			return nil
		}
		return fmt.Errorf("bad policy command %q", args)
	case "-Z", "--zero":
		return nil
	}
	return fmt.Errorf("unsupported command %q", cmd)
}

// parseRuleNum parses a positive rule number.
func parseRuleNum(s string) (int, bool) {
	n := 0
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, false
		}
		n = n*10 + int(r-'0')
	}
	return n, s != "" && n > 0
}

// insert adds a rule at index pos (-1: append) after checking the chain and its jump target.
func (t *fakeTable) insert(chain string, pos int, spec []string) error {
	ch := t.chains[chain]
	if ch == nil {
		return fmt.Errorf("no chain %s", chain)
	}
	if target := targetOf(spec); target != "" && !standardTargets[target] && t.chains[target] == nil {
		return fmt.Errorf("jump to unknown chain %s", target)
	}
	rule := joinArgs(spec)
	if pos < 0 || pos >= len(ch.rules) {
		if pos > len(ch.rules) {
			return fmt.Errorf("index %d too big for chain %s", pos+1, chain)
		}
		ch.rules = append(ch.rules, rule)
		return nil
	}
	ch.rules = slices.Insert(ch.rules, pos, rule)
	return nil
}

// delete removes the first copy of a rule, or the rule at a position.
func (t *fakeTable) delete(chain string, spec []string) error {
	ch := t.chains[chain]
	if ch == nil {
		return fmt.Errorf("no chain %s", chain)
	}
	if len(spec) == 1 {
		if n, ok := parseRuleNum(spec[0]); ok {
			if n > len(ch.rules) {
				return fmt.Errorf("no rule %d in chain %s", n, chain)
			}
			ch.rules = slices.Delete(ch.rules, n-1, n)
			return nil
		}
	}
	i := slices.Index(ch.rules, joinArgs(spec))
	if i < 0 {
		return fmt.Errorf("bad rule (does a matching rule exist in chain %s?)", chain)
	}
	ch.rules = slices.Delete(ch.rules, i, i+1)
	return nil
}

// flush empties one chain, or every chain when chain is "".
func (t *fakeTable) flush(chain string) error {
	if chain == "" {
		for _, ch := range t.chains {
			ch.rules = nil
		}
		return nil
	}
	ch := t.chains[chain]
	if ch == nil {
		return fmt.Errorf("no chain %s", chain)
	}
	ch.rules = nil
	return nil
}

// deleteChains deletes one user chain, or every user chain when chain is "". A deleted chain
// must be empty and unreferenced.
func (t *fakeTable) deleteChains(chain string) error {
	var victims []string
	if chain == "" {
		for name, ch := range t.chains {
			if !ch.builtin {
				victims = append(victims, name)
			}
		}
	} else {
		ch := t.chains[chain]
		if ch == nil || ch.builtin {
			return fmt.Errorf("no user chain %s", chain)
		}
		victims = []string{chain}
	}
	for _, name := range victims {
		if len(t.chains[name].rules) > 0 {
			return fmt.Errorf("chain %s is not empty", name)
		}
	}
	for _, ch := range t.chains {
		for _, r := range ch.rules {
			if target := targetOfSpec(r); slices.Contains(victims, target) {
				return fmt.Errorf("chain %s is still referenced", target)
			}
		}
	}
	for _, name := range victims {
		delete(t.chains, name)
	}
	return nil
}

// chainOrder returns a table's chains: built-in ones in kernel order, then the others sorted.
func (t *fakeTable) chainOrder(table string) []string {
	var user []string
	for name, ch := range t.chains {
		if !ch.builtin {
			user = append(user, name)
		}
	}
	slices.Sort(user)
	var out []string
	for _, b := range builtinChains[table] {
		if t.chains[b] != nil {
			out = append(out, b)
		}
	}
	return append(out, user...)
}

// ChainNames implements Executor.
func (f *Fake) ChainNames(_ context.Context, table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.table(table).chainOrder(table), nil
}

// EnsureChain implements Executor.
func (f *Fake) EnsureChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.table(table)
	if t.chains[chain] == nil {
		t.chains[chain] = &fakeChain{policy: "-"}
	}
	return nil
}

// EnsureRule implements Executor.
func (f *Fake) EnsureRule(table, chain string, args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.table(table)
	if ch := t.chains[chain]; ch != nil && slices.Contains(ch.rules, joinArgs(args)) {
		return nil
	}
	return t.insert(chain, 0, args)
}

// RuleExists implements Executor.
func (f *Fake) RuleExists(table, chain string, args ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := f.table(table).chains[chain]
	return ch != nil && slices.Contains(ch.rules, joinArgs(args)), nil
}

// DeleteRule implements Executor.
func (f *Fake) DeleteRule(table, chain string, args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch := f.table(table).chains[chain]; ch != nil {
		rule := joinArgs(args)
		ch.rules = slices.DeleteFunc(ch.rules, func(r string) bool { return r == rule })
	}
	return nil
}

// DeleteChain implements Executor.
func (f *Fake) DeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.table(table)
	if t.chains[chain] == nil {
		return nil
	}
	t.chains[chain].rules = nil
	return t.deleteChains(chain)
}

// Dump returns the whole state in a canonical iptables-save-like form: tables by name,
// built-in chains first, then user chains sorted, each chain's rules in order.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.tables))
	for name := range f.tables {
		names = append(names, name)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, name := range names {
		f.tables[name].dump(&b, name)
	}
	return b.String()
}

// Save implements Executor.
func (f *Fake) Save(_ context.Context, table string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	f.table(table).dump(&b, table)
	return []byte(b.String()), nil
}

// dump writes the table named name in iptables-save form.
func (t *fakeTable) dump(b *strings.Builder, name string) {
	order := t.chainOrder(name)
	b.WriteString("*" + name + "\n")
	for _, c := range order {
		b.WriteString(":" + c + " " + t.chains[c].policy + "\n")
	}
	for _, c := range order {
		for _, r := range t.chains[c].rules {
			b.WriteString("-A " + c + " " + r + "\n")
		}
	}
	b.WriteString("COMMIT\n")
}
