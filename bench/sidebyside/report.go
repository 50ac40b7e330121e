package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// status says whether a figure was measured.
type status int

const (
	measured status = iota // value holds the figure
	capped                 // the measurement hit its cap; limit holds the cap
	failed                 // the measurement failed; note says why
	skipped                // not measured (an earlier step failed, or the time budget ran out)
)

// figure is one cell of a result table, in the unit of its row.
type figure struct {
	status status
	value  float64
	limit  float64
	note   string
}

func measuredFigure(value float64, note string) figure {
	return figure{status: measured, value: value, note: note}
}

func cappedFigure(limit float64) figure { return figure{status: capped, limit: limit} }

func failedFigure(err error) figure { return figure{status: failed, note: err.Error()} }

func skippedFigure(reason string) figure { return figure{status: skipped, note: reason} }

// proxyResult holds every figure of one proxy in one mode.
type proxyResult struct {
	firstSyncSmall, connectSmall                   figure
	firstSync, restartSync, change                 figure
	peakRSS, cpuFirstSync, cpuTotal, syncMean      figure
	changeSync                                     figure
	connectLarge, throughput, connectionsPerSecond figure
	connectDirect                                  figure
}

// newProxyResult returns a result whose figures all say "not measured".
func newProxyResult() *proxyResult {
	s := skippedFigure("")
	return &proxyResult{s, s, s, s, s, s, s, s, s, s, s, s, s, s}
}

// tableRow is one row of a result table: a label, a unit and where its figure is.
type tableRow struct {
	label string
	unit  string
	get   func(*proxyResult) figure
}

// format renders a figure in unit.
func (f figure) format(unit string) string {
	switch f.status {
	case capped:
		return "> " + formatValue(f.limit, unit) + " (cap)"
	case failed:
		return "failed"
	case skipped:
		return "—"
	}
	text := formatValue(f.value, unit)
	if f.note != "" {
		text += " (" + f.note + ")"
	}
	return text
}

// formatValue renders a number in unit.
func formatValue(v float64, unit string) string {
	switch unit {
	case "s":
		return fmt.Sprintf("%.2f s", v)
	case "ms":
		return fmt.Sprintf("%.1f ms", v)
	case "µs":
		return fmt.Sprintf("%.0f µs", v)
	case "MiB":
		return fmt.Sprintf("%.0f MiB", v)
	case "MiB/s":
		return fmt.Sprintf("%.0f MiB/s", v)
	case "conn/s":
		return fmt.Sprintf("%.0f conn/s", v)
	}
	return fmt.Sprintf("%.3g %s", v, unit)
}

// ratio renders b/a: exact when both were measured, a bound when one hit its cap.
func ratio(a, b figure) string {
	switch {
	case a.status == measured && b.status == measured && a.value > 0:
		return fmt.Sprintf("%.2f×", b.value/a.value)
	case a.status == capped && b.status == measured && a.limit > 0:
		return fmt.Sprintf("< %.2f×", b.value/a.limit)
	case a.status == measured && b.status == capped && a.value > 0:
		return fmt.Sprintf("> %.2f×", b.limit/a.value)
	}
	return "—"
}

// renderTable renders one markdown table comparing two result columns.
func renderTable(title string, headers [3]string, rows []tableRow, a, b *proxyResult) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "#### %s\n\n", title)
	fmt.Fprintf(&sb, "| measure | %s | %s | %s |\n|---|---|---|---|\n", headers[0], headers[1], headers[2])
	for _, row := range rows {
		fa, fb := row.get(a), row.get(b)
		fmt.Fprintf(&sb, "| %s | %s | %s | %s |\n", row.label, fa.format(row.unit), fb.format(row.unit), ratio(fa, fb))
	}
	var notes []string
	for _, row := range rows {
		for i, f := range []figure{row.get(a), row.get(b)} {
			if f.status == failed {
				notes = append(notes, fmt.Sprintf("%s, %s: %s", headers[i], row.label, f.note))
			}
		}
	}
	for _, note := range notes {
		fmt.Fprintf(&sb, "\nfailed: %s", note)
	}
	sb.WriteString("\n\n")
	return sb.String()
}

// proxyRows are the rows of the per-mode tables.
func proxyRows(cfg config) []tableRow {
	n := fmt.Sprintf("%d×%d", cfg.services, cfg.endpoints)
	return []tableRow{
		{"first sync, fresh node, 10 services", "s", func(r *proxyResult) figure { return r.firstSyncSmall }},
		{"first sync, fresh node, " + n, "s", func(r *proxyResult) figure { return r.firstSync }},
		{"first sync after restart over existing rules, " + n + " + 1", "s", func(r *proxyResult) figure { return r.restartSync }},
		{fmt.Sprintf("change latency, median of %d (min–max)", cfg.changeSamples), "s", func(r *proxyResult) figure { return r.change }},
		{"peak RSS, proxy + children, first run", "MiB", func(r *proxyResult) figure { return r.peakRSS }},
		{"CPU time to first sync, proxy + children", "s", func(r *proxyResult) figure { return r.cpuFirstSync }},
		{"CPU time, whole first run", "s", func(r *proxyResult) figure { return r.cpuTotal }},
		{"own metric: sync_proxy_rules_duration mean (count)", "ms", func(r *proxyResult) figure { return r.syncMean }},
		{"own metric: mean duration of the syncs during the change samples (count)", "ms", func(r *proxyResult) figure { return r.changeSync }},
		{fmt.Sprintf("connect latency, median of %d, 10 services", cfg.connects), "µs", func(r *proxyResult) figure { return r.connectSmall }},
		{fmt.Sprintf("connect latency, median of %d, %d services", cfg.connects, cfg.services), "µs", func(r *proxyResult) figure { return r.connectLarge }},
		{"baseline: connect latency to the pod IP, no Service, 10 services", "µs", func(r *proxyResult) figure { return r.connectDirect }},
	}
}

// userspaceRows are the rows of the userspace-versus-nftables table.
func userspaceRows(cfg config) []tableRow {
	return []tableRow{
		{fmt.Sprintf("TCP throughput, %d MiB through a ClusterIP, median of %d (min–max)", cfg.transferMiB, throughputRuns), "MiB/s", func(r *proxyResult) figure { return r.throughput }},
		{fmt.Sprintf("new connections per second, %d clients, %v", cfg.rateWorkers, cfg.rateDuration), "conn/s", func(r *proxyResult) figure { return r.connectionsPerSecond }},
		{fmt.Sprintf("connect latency, median of %d, 10 services", cfg.connects), "µs", func(r *proxyResult) figure { return r.connectSmall }},
		{"baseline: connect latency to the pod IP, no Service", "µs", func(r *proxyResult) figure { return r.connectDirect }},
	}
}

// environment describes where and when the run happened.
type environment struct {
	date, command, commit, kernel, upstream string
	cpus                                    int
	memGiB                                  float64
	loadBefore, loadAfter                   string
	wall                                    time.Duration
	// caps are the caps the large stage used by mode (lower than -cap when the budget was short).
	caps map[string]time.Duration
}

// renderReport renders the whole report: the header and one table per mode, then the
// userspace table.
func renderReport(cfg config, env environment, results map[string]map[string]*proxyResult) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "### %s: %d services × %d endpoints\n\n", env.date, cfg.services, cfg.endpoints)
	fmt.Fprintf(&sb, "- command: `%s`\n", env.command)
	fmt.Fprintf(&sb, "- machine: %d CPUs, %.1f GiB; kernel %s; nodeproxy commit %s; upstream %s\n", env.cpus, env.memGiB, env.kernel, env.commit, env.upstream)
	fmt.Fprintf(&sb, "- load (uptime) before: %s; after: %s\n", env.loadBefore, env.loadAfter)
	fmt.Fprintf(&sb, "- wall time %v; caps: %v per wait, time budget %v\n\n", env.wall.Round(time.Second), cfg.cap, cfg.budget)
	headers := [3]string{"upstream kube-proxy", "nodeproxy", "nodeproxy / upstream"}
	for _, mode := range cfg.modes {
		title := fmt.Sprintf("mode %s", mode)
		anyCapped := results[mode][upstreamName].firstSync.status == capped || results[mode][nodeproxyName].firstSync.status == capped
		if limit, ok := env.caps[mode]; ok && limit < cfg.cap && anyCapped {
			title += fmt.Sprintf(" (cap of the %d-service runs lowered to %v to fit the time budget)", cfg.services, limit)
		}
		sb.WriteString(renderTable(title, headers, proxyRows(cfg), results[mode][upstreamName], results[mode][nodeproxyName]))
	}
	if cfg.userspace {
		headers := [3]string{"nodeproxy nftables", "nodeproxy userspace", "userspace / nftables"}
		sb.WriteString(renderTable("nodeproxy userspace versus nftables (10 services)", headers, userspaceRows(cfg),
			results["nftables"][nodeproxyName], results["userspace"][nodeproxyName]))
	}
	return sb.String()
}

// resultsPreamble starts a new results file: what the figures are and how they are taken.
const resultsPreamble = `# Side-by-side benchmark results

Appended by ` + "`go run ./bench/sidebyside`" + ` (run by ` + "`make bench`" + `; see bench/sidebyside/main.go
for how each figure is measured). Lower is better except throughput and connections per
second. Ratios are nodeproxy / upstream (userspace / nftables in the userspace table); "> x
(cap)" means the measurement was stopped at its cap.

`

// appendResults appends the report to path, starting the file with resultsPreamble.
func appendResults(path, report string) error {
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	if os.IsNotExist(statErr) {
		report = resultsPreamble + report
	}
	if _, err := f.WriteString(report); err != nil {
		_ = f.Close()
		return fmt.Errorf("appending to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", path, err)
	}
	return nil
}
