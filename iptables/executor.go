package iptables

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"

	goipt "github.com/coreos/go-iptables/iptables"
	v1 "k8s.io/api/core/v1"
)

// The iptables backends of the node; nodeproxy uses the same one as everything else there.
const (
	// VariantLegacy is iptables-legacy (x_tables).
	VariantLegacy = "legacy"
	// VariantNFT is iptables-nft (x_tables rules in nf_tables).
	VariantNFT = "nft"
)

// waitSeconds is the xtables lock wait of every command (-w 5), as upstream.
const waitSeconds = 5

// Executor runs iptables operations for one IP family. The real one execs the iptables
// binaries; Fake keeps the tables in memory.
type Executor interface {
	// Restore feeds data to iptables-restore --noflush (ip6tables-restore for IPv6).
	Restore(ctx context.Context, data []byte) error
	// ChainNames returns the names of every chain of a table, as iptables-save lists them.
	ChainNames(ctx context.Context, table string) ([]string, error)
	// Save returns iptables-save's output for one table.
	Save(ctx context.Context, table string) ([]byte, error)
	// EnsureChain creates a chain unless it exists.
	EnsureChain(table, chain string) error
	// EnsureRule inserts a rule at the top of a chain unless an identical rule is in it.
	EnsureRule(table, chain string, args ...string) error
	// RuleExists reports whether an identical rule is in the chain (false when the chain is
	// missing).
	RuleExists(table, chain string, args ...string) (bool, error)
	// DeleteRule deletes every copy of a rule; a missing rule or chain is not an error.
	DeleteRule(table, chain string, args ...string) error
	// DeleteChain flushes and deletes a chain; a missing chain is not an error.
	DeleteChain(table, chain string) error
}

// binaries are the paths of one family's iptables commands of one variant.
type binaries struct {
	main, restore, save string
}

// lookupBinaries finds the commands of a variant for a family: iptables-VARIANT and friends,
// or the plain iptables names when they are that variant.
func lookupBinaries(family v1.IPFamily, variant string) (binaries, error) {
	base := "iptables"
	if family == v1.IPv6Protocol {
		base = "ip6tables"
	}
	find := func(names ...string) (binaries, error) {
		var b binaries
		var err error
		for i, dst := range []*string{&b.main, &b.restore, &b.save} {
			if *dst, err = exec.LookPath(names[i]); err != nil {
				return b, fmt.Errorf("looking up %s: %w", names[i], err)
			}
		}
		return b, nil
	}
	b, err := find(base+"-"+variant, base+"-"+variant+"-restore", base+"-"+variant+"-save")
	if err == nil {
		return b, nil
	}
	plain, plainErr := find(base, base+"-restore", base+"-save")
	if plainErr != nil {
		return binaries{}, err
	}
	out, vErr := exec.Command(plain.main, "--version").Output()
	if vErr != nil {
		return binaries{}, fmt.Errorf("running %s --version: %w", plain.main, vErr)
	}
	isNFT := strings.Contains(string(out), "nf_tables")
	if isNFT != (variant == VariantNFT) {
		return binaries{}, fmt.Errorf("no %s binaries: %w (and %s is %s)", variant, err, plain.main, strings.TrimSpace(string(out)))
	}
	return plain, nil
}

// execExecutor runs the iptables binaries of one variant and family in one network namespace.
type execExecutor struct {
	bins binaries
	ipt  *goipt.IPTables
	ns   nsRunner
	// session runs the restores on iptables-nft (nil on iptables-legacy).
	session *restoreSession
	// saveSize is the length of the last iptables-save output of each table: the next one
	// is read into a buffer of that size (growing a buffer to the 2 MiB of a 1,000-Service
	// table, doubling, cost ~30 ms of copying and page faults).
	saveSizeMu sync.Mutex
	saveSize   map[string]int
}

// newExecExecutor returns the real executor for family and variant in ns.
func newExecExecutor(family v1.IPFamily, variant string, ns nsRunner) (*execExecutor, error) {
	bins, err := lookupBinaries(family, variant)
	if err != nil {
		return nil, err
	}
	proto := goipt.ProtocolIPv4
	if family == v1.IPv6Protocol {
		proto = goipt.ProtocolIPv6
	}
	ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Timeout(waitSeconds), goipt.Path(bins.main))
	if err != nil {
		return nil, fmt.Errorf("setting up %s: %w", bins.main, err)
	}
	e := &execExecutor{bins: bins, ipt: ipt, ns: ns}
	if variant == VariantNFT {
		e.session = &restoreSession{path: bins.restore, ns: ns}
	}
	return e, nil
}

// failedLine matches the line number in iptables-restore's error message.
var failedLine = regexp.MustCompile(`line (\d+) failed|Error occurred at line: (\d+)`)

// Restore implements Executor: through the executor's restore session on iptables-nft, with
// one iptables-restore process per call on iptables-legacy.
func (e *execExecutor) Restore(ctx context.Context, data []byte) error {
	if e.session != nil {
		return e.session.restore(ctx, data)
	}
	var stderr bytes.Buffer
	err := e.ns.do(func() error {
		cmd := exec.CommandContext(ctx, e.bins.restore, "-w", strconv.Itoa(waitSeconds), "--noflush")
		cmd.Stdin = bytes.NewReader(data)
		cmd.Stderr = &stderr
		return cmd.Run()
	})
	if err == nil {
		return nil
	}
	return fmt.Errorf("running %s --noflush in %s: %w: %s", e.bins.restore, e.ns, err, describeRestoreError(stderr.String(), data, 0))
}

// close ends the restore session's process, if any.
func (e *execExecutor) close() {
	if e.session != nil {
		e.session.close()
	}
}

// describeRestoreError returns iptables-restore's error output with the line it names quoted
// from data; the process's line numbers count offset lines before data.
func describeRestoreError(stderr string, data []byte, offset int) string {
	msg := strings.TrimSpace(stderr)
	if m := failedLine.FindStringSubmatch(msg); m != nil {
		if n, convErr := strconv.Atoi(m[1] + m[2]); convErr == nil && n > offset {
			msg += fmt.Sprintf(" (line %d of the input: %q)", n-offset, lineOf(data, n-offset))
		}
	}
	return msg
}

// lineOf returns line n (1-based) of data.
func lineOf(data []byte, n int) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for i := 1; sc.Scan(); i++ {
		if i == n {
			return sc.Text()
		}
	}
	return ""
}

// ChainNames implements Executor.
func (e *execExecutor) ChainNames(ctx context.Context, table string) ([]string, error) {
	out, err := e.Save(ctx, table)
	if err != nil {
		return nil, err
	}
	return chainsFromSave(out), nil
}

// Save implements Executor.
func (e *execExecutor) Save(ctx context.Context, table string) ([]byte, error) {
	var out, stderr bytes.Buffer
	e.saveSizeMu.Lock()
	out.Grow(e.saveSize[table] + e.saveSize[table]/8)
	e.saveSizeMu.Unlock()
	err := e.ns.do(func() error {
		cmd := exec.CommandContext(ctx, e.bins.save, "-t", table)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		return cmd.Run()
	})
	if err != nil {
		return nil, fmt.Errorf("running %s -t %s in %s: %w: %s", e.bins.save, table, e.ns, err, strings.TrimSpace(stderr.String()))
	}
	e.saveSizeMu.Lock()
	if e.saveSize == nil {
		e.saveSize = map[string]int{}
	}
	e.saveSize[table] = out.Len()
	e.saveSizeMu.Unlock()
	return out.Bytes(), nil
}

// chainsFromSave returns the chain names declared in iptables-save output.
func chainsFromSave(save []byte) []string {
	var names []string
	for _, line := range bytes.Split(save, []byte{'\n'}) {
		if len(line) > 1 && line[0] == ':' {
			if f := strings.Fields(string(line[1:])); len(f) > 0 {
				names = append(names, f[0])
			}
		}
	}
	return names
}

// EnsureChain implements Executor.
func (e *execExecutor) EnsureChain(table, chain string) error {
	return e.ns.do(func() error {
		exists, err := e.ipt.ChainExists(table, chain)
		if err != nil {
			return fmt.Errorf("checking chain %s in table %s: %w", chain, table, err)
		}
		if exists {
			return nil
		}
		if err := e.ipt.NewChain(table, chain); err != nil {
			return fmt.Errorf("creating chain %s in table %s: %w", chain, table, err)
		}
		return nil
	})
}

// EnsureRule implements Executor.
func (e *execExecutor) EnsureRule(table, chain string, args ...string) error {
	return e.ns.do(func() error {
		if err := e.ipt.InsertUnique(table, chain, 1, args...); err != nil {
			return fmt.Errorf("ensuring rule %q in %s/%s: %w", args, table, chain, err)
		}
		return nil
	})
}

// RuleExists implements Executor.
func (e *execExecutor) RuleExists(table, chain string, args ...string) (bool, error) {
	var exists bool
	err := e.ns.do(func() error {
		var err error
		if exists, err = e.ipt.Exists(table, chain, args...); err != nil {
			return fmt.Errorf("checking rule %q in %s/%s: %w", args, table, chain, err)
		}
		return nil
	})
	return exists, err
}

// maxDuplicateRules bounds DeleteRule's loop over copies of one rule.
const maxDuplicateRules = 100

// DeleteRule implements Executor.
func (e *execExecutor) DeleteRule(table, chain string, args ...string) error {
	return e.ns.do(func() error {
		for range maxDuplicateRules {
			exists, err := e.ipt.Exists(table, chain, args...)
			if err != nil {
				return fmt.Errorf("checking rule %q in %s/%s: %w", args, table, chain, err)
			}
			if !exists {
				return nil
			}
			if err := e.ipt.Delete(table, chain, args...); err != nil {
				return fmt.Errorf("deleting rule %q from %s/%s: %w", args, table, chain, err)
			}
		}
		return fmt.Errorf("deleting rule %q from %s/%s: more than %d copies", args, table, chain, maxDuplicateRules)
	})
}

// DeleteChain implements Executor.
func (e *execExecutor) DeleteChain(table, chain string) error {
	return e.ns.do(func() error {
		if err := e.ipt.ClearAndDeleteChain(table, chain); err != nil {
			return fmt.Errorf("deleting chain %s from table %s: %w", chain, table, err)
		}
		return nil
	})
}
