package main

import (
	"fmt"
	"net"
	"slices"
	"time"

	"k8s.io/klog/v2"
)

// repeatLimit bounds the first syncs worth repeating: a proxy whose first fresh or restart sync
// took longer is measured once (its repeats would spend the time budget without changing the
// reading).
const repeatLimit = time.Minute

// repeatFirstSyncs measures the fresh and the restart first sync of impl in mode again, until
// -sync-runs pairs are measured, and replaces both figures by the median with the range as
// note. The first pair is the one runLarge measured; a repeat that fails or is capped ends the
// series (the figures keep the pairs measured so far).
func (b *bench) repeatFirstSyncs(impl proxyImpl, mode string, r *proxyResult) {
	if b.cfg.syncRuns <= 1 || !worthRepeating(r.firstSync) || !worthRepeating(r.restartSync) {
		return
	}
	fresh, restarts := []float64{r.firstSync.value}, []float64{r.restartSync.value}
	for len(fresh) < b.cfg.syncRuns {
		f, rs, err := b.freshThenRestart(impl, mode)
		if err != nil {
			klog.ErrorS(err, "Repeating the first syncs", "proxy", impl.name, "mode", mode)
			break
		}
		if f.status != measured || rs.status != measured {
			klog.InfoS("Repeated first sync not measured, ending the series", "proxy", impl.name, "mode", mode, "fresh", f.note, "restart", rs.note)
			break
		}
		fresh, restarts = append(fresh, f.value), append(restarts, rs.value)
	}
	r.firstSync, r.restartSync = medianFigure(fresh), medianFigure(restarts)
}

// worthRepeating reports whether a first-sync figure was measured within repeatLimit.
func worthRepeating(f figure) bool {
	return f.status == measured && f.value <= repeatLimit.Seconds()
}

// freshThenRestart measures one first sync on a fresh node (API objects reset, node rules
// flushed) and then one restart over the rules it left.
func (b *bench) freshThenRestart(impl proxyImpl, mode string) (fresh, restart figure, err error) {
	if err := b.resetAPI(); err != nil {
		return fresh, restart, err
	}
	if err := resetNode(b.c); err != nil {
		return fresh, restart, err
	}
	node, started, err := b.startProxy(impl, mode)
	if err != nil {
		return fresh, restart, err
	}
	fresh = b.timeToReach(node, net.JoinHostPort(b.lastIP, "80"), started, b.waitCap)
	klog.InfoS("First sync (repeat)", "proxy", impl.name, "mode", mode, "seconds", fresh.value, "status", fresh.status)
	b.stopProxy()
	if fresh.status != measured {
		return fresh, restart, nil
	}
	restart, err = b.restart(impl, mode)
	return fresh, restart, err
}

// medianFigure is the median of samples with "median of n: min–max" as note (no note for one).
func medianFigure(samples []float64) figure {
	if len(samples) == 1 {
		return measuredFigure(samples[0], "")
	}
	note := fmt.Sprintf("median of %d: %.2f–%.2f", len(samples), slices.Min(samples), slices.Max(samples))
	return measuredFigure(median(samples), note)
}
