package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// familyProxier programs one IP family. Sync calls are serialized by the caller (Core).
type familyProxier struct {
	family  v1.IPFamily
	exec    Executor
	rules   *familyRules
	metrics *metrics.Metrics
	// splitRestores splits big syncs into chunk restores (see syncWrite.inputs). It is off
	// for iptables-legacy, whose every restore loads and commits the whole table: there, ten
	// chunks of a 10,000-port ruleset cost 6x one restore.
	splitRestores bool

	// state is what the kernel holds as of the last successful sync; nil when unknown (at
	// start and after a failure), which makes the next sync a full one.
	state *committed
	// canaryLost is set by the canary monitor: the next sync is a full one.
	canaryLost atomic.Bool
}

// sync programs one family: a full sync when asked, when the state is unknown or when a canary
// was lost; otherwise a partial sync of the checkout's changes.
func (fp *familyProxier) sync(ctx context.Context, full bool, co *proxier.Checkout, tracker *proxier.Tracker, node endpoints.Node) error {
	if fp.canaryLost.Swap(false) || fp.state == nil {
		full = true
	}
	if !full && co != nil && largeClusterMode(fp.endpointsAfter(co)) != fp.rules.largeCluster {
		full = true // every per-endpoint rule gains or loses its comment
	}
	var err error
	switch {
	case full && tracker == nil:
		err = fmt.Errorf("full sync without the applied state")
	case full:
		err = fp.syncFull(ctx, tracker, node)
	case co != nil:
		err = fp.syncPartial(ctx, co, node)
	}
	if err != nil {
		fp.state = nil
		return fmt.Errorf("syncing %s iptables rules (full=%t): %w", fp.family, full, err)
	}
	if fp.metrics != nil && fp.state != nil {
		fp.metrics.IPTablesRulesTotal.WithLabelValues(tableFilter, string(fp.family)).Set(float64(fp.state.filterRules))
		fp.metrics.IPTablesRulesTotal.WithLabelValues(tableNAT, string(fp.family)).Set(float64(fp.state.natRules))
	}
	return nil
}

// portInput is one applied service port with its endpoints.
type portInput struct {
	port *proxier.ServicePort
	eps  []endpoints.Endpoint
}

// syncFull programs every top-level chain and every service port's chains from the tracker
// (rewriting those the kernel does not hold exactly: see renderFull), deletes the stale
// service chains found in the kernel, and ensures the jump rules.
func (fp *familyProxier) syncFull(ctx context.Context, tracker *proxier.Tracker, node endpoints.Node) error {
	var inputs []portInput
	tracker.ForEach(func(p *proxier.ServicePort, eps []endpoints.Endpoint) {
		inputs = append(inputs, portInput{port: p, eps: eps})
	})
	slices.SortFunc(inputs, func(a, b portInput) int { return comparePortNames(a.port.Name, b.port.Name) })
	total := 0
	for _, in := range inputs {
		total += len(in.eps)
	}
	fp.setLargeCluster(largeClusterMode(total), total)
	ports := make([]builtPort, len(inputs))
	for i, in := range inputs {
		ports[i] = builtPort{name: in.port.Name, rules: fp.rules.buildPort(in.port, in.eps, node)}
	}
	saved, err := fp.saveTables(ctx)
	if err != nil {
		klog.ErrorS(err, "Failed to save the tables: every chain is rewritten, stale service chains stay", "family", fp.family)
	}
	sw, state := renderFull(fp.rules, ports, saved)
	if err == nil {
		fp.writeMissingJumps(&sw.final, saved)
	}
	if err := fp.restore(ctx, sw, true); err != nil {
		return err
	}
	if saved == nil {
		if err := fp.ensureJumps(); err != nil {
			return err
		}
	}
	fp.state = state
	return nil
}

// endpointsAfter returns how many endpoints all ports will have once co is applied.
func (fp *familyProxier) endpointsAfter(co *proxier.Checkout) int {
	total := fp.state.endpointCount
	for i := range co.Changes {
		ch := &co.Changes[i]
		if old := fp.state.ports[ch.Name]; old != nil {
			total -= old.endpointCount
		}
		if ch.Current != nil {
			total += len(ch.Endpoints)
		}
	}
	return total
}

// setLargeCluster switches large-cluster mode for the rules built from now on.
func (fp *familyProxier) setLargeCluster(on bool, count int) {
	if on != fp.rules.largeCluster {
		klog.InfoS("Per-endpoint rules carry comments only up to the large-cluster threshold",
			"family", fp.family, "endpoints", count, "threshold", largeClusterEndpointsThreshold, "comments", !on)
	}
	fp.rules.largeCluster = on
}

// syncPartial writes only what the checkout's changes alter, computed against the committed
// state: no kernel read, and nothing at all (no iptables-restore) when no rule changes.
func (fp *familyProxier) syncPartial(ctx context.Context, co *proxier.Checkout, node endpoints.Node) error {
	type update struct {
		name endpoints.ServicePortName
		rec  *committedPort
	}
	sw := &syncWrite{support: []chainRules{fp.rules.markMasqChain()}}
	updates := make([]update, 0, len(co.Changes))
	for i := range co.Changes {
		ch := &co.Changes[i]
		var cur *portRules
		if ch.Current != nil {
			cur = fp.rules.buildPort(ch.Current, ch.Endpoints, node)
		}
		updates = append(updates, update{name: ch.Name, rec: renderPortChange(sw, fp.state.ports[ch.Name], cur)})
	}
	if err := fp.restore(ctx, sw, false); err != nil {
		return err
	}
	for _, u := range updates {
		fp.state.set(u.name, u.rec)
	}
	return nil
}

// restore runs the iptables-restore inputs of sw in order (none when nothing changes), and
// keeps the metrics. It stops at the first failure: the chunks already applied leave every
// service working (see syncWrite.inputs), and the caller makes the next sync a full one.
func (fp *familyProxier) restore(ctx context.Context, sw *syncWrite, full bool) error {
	inputs := sw.inputs(fp.splitRestores)
	var filterN, natN int
	for i, rt := range inputs {
		if err := fp.exec.Restore(ctx, rt.bytes()); err != nil {
			if fp.metrics != nil {
				fp.metrics.IPTablesRestoreFailuresTotal.WithLabelValues(string(fp.family)).Inc()
				if !full {
					fp.metrics.IPTablesPartialRestoreFailuresTotal.WithLabelValues(string(fp.family)).Inc()
				}
			}
			if len(inputs) > 1 {
				return fmt.Errorf("restore %d of %d: %w", i+1, len(inputs), err)
			}
			return err
		}
		f, n := rt.ruleLines()
		filterN, natN = filterN+f, natN+n
	}
	if fp.metrics != nil {
		fp.metrics.IPTablesRulesLastSync.WithLabelValues(tableFilter, string(fp.family)).Set(float64(filterN))
		fp.metrics.IPTablesRulesLastSync.WithLabelValues(tableNAT, string(fp.family)).Set(float64(natN))
	}
	return nil
}

// jumps returns the jump rules from built-in chains this family needs, in insertion order.
func (fp *familyProxier) jumps() []jumpRule {
	if fp.rules.usesKubeletFirewall() {
		return append(slices.Clone(jumpRules), kubeletFirewallJumps...)
	}
	return jumpRules
}

// saveTables reads the nat and filter tables (iptables-save), parsed; nil on failure.
func (fp *familyProxier) saveTables(ctx context.Context) (map[string]savedChains, error) {
	saved := map[string]savedChains{}
	for _, table := range []string{tableNAT, tableFilter} {
		out, err := fp.exec.Save(ctx, table)
		if err != nil {
			return nil, fmt.Errorf("saving table %s: %w", table, err)
		}
		saved[table] = parseSave(out)
	}
	return saved, nil
}

// writeMissingJumps adds to rt, the final restore of a full sync, an insertion at the top of
// its built-in chain for every jump the saved tables lack. A full sync thus ensures the
// jumps inside its own restore instead of with two iptables commands per jump (-C, then -I),
// each of which loads the table: 14 jumps cost 0.3-0.5 s at 1,000 Services x 10 on
// iptables-nft, a third of the whole sync.
func (fp *familyProxier) writeMissingJumps(rt *restoreText, saved map[string]savedChains) {
	for _, j := range fp.jumps() {
		if !saved[j.table].hasJump(j.from, j.to) {
			t := rt.table(j.table)
			t.rules = append(t.rules, "-I "+j.from+" 1 "+joinArgs(j.args()))
		}
	}
}

// ensureJumps makes sure the built-in chains jump to the top-level chains (which the restore
// just created), with one command per jump: the fallback when the tables could not be saved.
func (fp *familyProxier) ensureJumps() error {
	for _, j := range fp.jumps() {
		if err := fp.exec.EnsureRule(j.table, j.from, j.args()...); err != nil {
			return fmt.Errorf("ensuring the jump from %s to %s in table %s: %w", j.from, j.to, j.table, err)
		}
	}
	return nil
}

// comparePortNames orders service port names by namespace, name, port and protocol.
func comparePortNames(a, b endpoints.ServicePortName) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	if c := strings.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return strings.Compare(string(a.Protocol), string(b.Protocol))
}
