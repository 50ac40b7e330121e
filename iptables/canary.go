package iptables

import (
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// canaryTables are the tables holding a canary chain, as upstream's Monitor.
var canaryTables = []string{tableMangle, tableNAT, tableFilter}

// canaryMarker is the one rule of each canary chain. Nothing jumps to the chain, so the rule
// never runs; it only makes a flush (iptables -F) as visible as a chain deletion (-X), which
// upstream's empty canaries cannot tell.
var canaryMarker = []string{"-m", "comment", "--comment", "nodeproxy canary", "-j", "RETURN"}

// Settling of a lost canary: after one canary is gone, wait this long (polling) for the others
// to go too, so that the repair does not race with a flush still in progress.
const (
	canarySettlePoll    = 100 * time.Millisecond
	canarySettleTimeout = 5 * time.Second
)

// Run monitors the canary chains of every family until ctx is done, then deletes them and
// ends the iptables-nft-restore processes the syncs kept running. When a canary disappears
// (an external flush of our tables), the family's next Sync becomes a full one,
// Config.OnCanaryLost is called, and the canaries are recreated.
func (p *Proxier) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, fp := range p.families {
		wg.Go(func() {
			fp.monitor(ctx, p.cfg.SyncPeriod, p.cfg.OnCanaryLost)
			if e, ok := fp.exec.(*execExecutor); ok {
				e.close()
			}
		})
	}
	wg.Wait()
}

// monitor polls one family's canaries every period.
func (fp *familyProxier) monitor(ctx context.Context, period time.Duration, onLost func()) {
	if err := fp.ensureCanaries(); err != nil {
		klog.ErrorS(err, "Failed to create the canary chains; retrying at the next poll", "family", fp.family)
	}
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			fp.deleteCanaries()
			return
		case <-ticker.C:
		}
		lost, err := fp.canariesMissing(false)
		if err != nil {
			klog.ErrorS(err, "Failed to check the canary chains", "family", fp.family)
			continue
		}
		if !lost {
			continue
		}
		fp.waitForFlush(ctx)
		klog.InfoS("iptables canary lost: rules were flushed externally, forcing a full sync", "family", fp.family)
		fp.canaryLost.Store(true)
		if onLost != nil {
			onLost()
		}
		if err := fp.ensureCanaries(); err != nil {
			klog.ErrorS(err, "Failed to recreate the canary chains; retrying at the next poll", "family", fp.family)
		}
	}
}

// waitForFlush waits, up to canarySettleTimeout, until every canary is gone.
func (fp *familyProxier) waitForFlush(ctx context.Context) {
	deadline := time.NewTimer(canarySettleTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(canarySettlePoll)
	defer poll.Stop()
	for {
		if all, err := fp.canariesMissing(true); err != nil || all {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-poll.C:
		}
	}
}

// canariesMissing reports whether any canary (all=false) or every canary (all=true) has lost
// its marker rule (or its chain).
func (fp *familyProxier) canariesMissing(all bool) (bool, error) {
	missing := 0
	for _, table := range canaryTables {
		ok, err := fp.exec.RuleExists(table, ChainCanary, canaryMarker...)
		if err != nil {
			return false, err
		}
		if !ok {
			missing++
		}
	}
	if all {
		return missing == len(canaryTables), nil
	}
	return missing > 0, nil
}

// ensureCanaries creates the canary chains with their marker rule.
func (fp *familyProxier) ensureCanaries() error {
	for _, table := range canaryTables {
		if err := fp.exec.EnsureChain(table, ChainCanary); err != nil {
			return err
		}
		if err := fp.exec.EnsureRule(table, ChainCanary, canaryMarker...); err != nil {
			return err
		}
	}
	return nil
}

// deleteCanaries removes the canary chains (best effort, as upstream on stop).
func (fp *familyProxier) deleteCanaries() {
	for _, table := range canaryTables {
		if err := fp.exec.DeleteChain(table, ChainCanary); err != nil {
			klog.ErrorS(err, "Failed to delete a canary chain", "family", fp.family, "table", table)
		}
	}
}
