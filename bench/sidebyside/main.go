// Command sidebyside benchmarks nodeproxy against upstream kube-proxy on the e2e harness's
// cluster (e2e/cluster): a real kube-apiserver, N Services without selectors with M endpoints
// each in EndpointSlices written through the API, and one real pod endpoint.
//
// Run as root from the repository root, after hack/control-plane.sh and hack/kube-proxy.sh
// (hack/bench.sh does all of it):
//
//	go run ./bench/sidebyside -upstream .cache/bin/kube-proxy      # 1,000 × 10
//	BENCH_FULL=1 go run ./bench/sidebyside ...                     # 10,000 × 10
//
// The real pod is a network namespace of the run on node-a, joined to it by a veth pair, with
// an echo server (port 8080) and a byte sink (8081) listening inside it; both are listeners of
// this process opened in that namespace. No pod agent runs. Fake endpoints sit in
// 10.244.100.0-10.244.255.255, which nothing routes; traffic only ever goes to Services on the
// pod, from node-a's namespace (a dummy interface routes the Service CIDR there, so packets a
// proxy does not rewrite die on the node).
//
// The proxies run one at a time on node-a (upstream and ours never together: on 2 cores a
// proxy busy with its first sync would slow the other's), nodeproxy first in each mode. Before
// every fresh run the node is reset: nftables ruleset flushed (the iptables-nft tables with it),
// legacy iptables flushed, conntrack flushed. Both get the harness's flags plus
// --conntrack-max-per-core=0 and otherwise their defaults (min sync period 1 s, ...).
//
// Figures, all measured from outside the proxies:
//   - first sync: from the proxy process's start (its start time in /proc, 10 ms resolution)
//     until an echo round trip over a new connection to the last-created Service's ClusterIP
//     succeeds. New connections are tried every 20 ms (up to 32 in flight, 1 s each), since a
//     retransmitted SYN keeps its first conntrack entry. At 10 services ("small stage") and at
//     N services. After a restart: the proxy is stopped, one more Service on the pod is created
//     and the proxy started again over the rules it left; measured until that Service answers.
//     At N services both are measured -sync-runs times (fresh, restart, fresh, ...) and the
//     median reported with the range, unless the first took over a minute.
//   - change latency: from just before the API write (a merge patch replacing the endpoints of a
//     Service's slice with the pod) until a new connection to that Service answers; median of
//     -change-samples Services, 2 s apart so each starts with the proxy idle.
//   - peak RSS: the sum of VmRSS (statm) over the proxy and its live descendants (nft,
//     iptables-restore), sampled every 20 ms from start until the end of the first run.
//   - CPU: utime+stime of the proxy, cutime+cstime (children it waited for) and live children,
//     read from /proc at first sync and at the end of the first run.
//   - own metric: kubeproxy_sync_proxy_rules_duration_seconds sum/count (IPv4 series) scraped
//     from the proxy's metrics endpoint at the end of the first run; and the same metric's
//     growth over the change samples (sum/count of the syncs they caused): the one-change sync
//     as the proxy itself times it, without the API and watch latency around it.
//   - connect latency: the TCP handshake time of -connects sequential connections to a
//     ClusterIP, median, from a thread inside node-a's namespace.
//   - userspace table: a -transfer-mib MiB upload to the sink through a ClusterIP (dial to the
//     sink's confirmed byte count; median of 3) and completed connections per second (connect, one byte
//     echoed, close) by -rate-workers clients for -rate-duration, through nodeproxy's nftables
//     and userspace modes with 10 services.
//
// Every wait is capped (-cap) and the whole run has a budget (-budget): a capped figure reads
// "> cap", figures past the budget "—". When the budget left cannot give every remaining
// large-stage run the full cap, the cap of a mode is lowered to an equal share, so both proxies
// of a mode always get the same cap (the table title says so). The cluster, the pod namespace and every process are
// removed at the end (cluster.Stop, then CheckLeaks). The report goes to stdout and is appended
// to -results.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// config is the benchmark's settings.
type config struct {
	services, endpoints int
	cap, budget         time.Duration
	modes               []string
	skipUpstream        bool
	userspace           bool
	upstream            string
	results             string
	command             string
	changeSamples       int
	syncRuns            int
	connects            int
	transferMiB         int
	rateWorkers         int
	rateDuration        time.Duration
}

// parseConfig reads the flags; BENCH_FULL=1 switches the defaults to the full scale.
func parseConfig() (config, error) {
	full := os.Getenv("BENCH_FULL") == "1"
	cfg := config{services: 1000, endpoints: 10, cap: 3 * time.Minute, budget: 20 * time.Minute}
	if full {
		cfg.services, cfg.cap, cfg.budget = 10000, 10*time.Minute, 23*time.Minute
	}
	var modes string
	klog.InitFlags(nil)
	flag.IntVar(&cfg.services, "services", cfg.services, "how many Services (BENCH_FULL=1: 10000)")
	flag.IntVar(&cfg.endpoints, "endpoints", cfg.endpoints, "endpoints per filler Service")
	flag.DurationVar(&cfg.cap, "cap", cfg.cap, "cap of each wait (BENCH_FULL=1: 10m)")
	flag.DurationVar(&cfg.budget, "budget", cfg.budget, "time budget of the measurements; later ones are skipped")
	flag.StringVar(&modes, "modes", "nftables,iptables", "kernel modes to compare")
	flag.BoolVar(&cfg.skipUpstream, "skip-upstream", false, "measure nodeproxy only (quick iterations; the report's upstream column stays empty)")
	flag.BoolVar(&cfg.userspace, "userspace", true, "also compare nodeproxy's userspace and nftables data paths")
	flag.StringVar(&cfg.upstream, "upstream", ".cache/bin/kube-proxy", "upstream kube-proxy binary (hack/kube-proxy.sh builds it)")
	flag.StringVar(&cfg.results, "results", "bench/results.md", "file the report is appended to (empty: none)")
	flag.StringVar(&cfg.command, "command", "", "the command line recorded with the results (default: this one)")
	flag.IntVar(&cfg.changeSamples, "change-samples", 5, "change-latency samples")
	flag.IntVar(&cfg.syncRuns, "sync-runs", 3, "fresh and restart first syncs measured at full scale (median reported); repeats only when the first took at most a minute")
	flag.IntVar(&cfg.connects, "connects", 50, "connections per connect-latency figure")
	flag.IntVar(&cfg.transferMiB, "transfer-mib", 1024, "MiB sent in the throughput figure (256 MiB lasted ~0.25 s and varied with scheduling noise)")
	flag.IntVar(&cfg.rateWorkers, "rate-workers", 4, "clients in the connection-rate figure")
	flag.DurationVar(&cfg.rateDuration, "rate-duration", 3*time.Second, "length of the connection-rate figure")
	flag.Parse()
	cfg.modes = strings.Split(modes, ",")
	for _, mode := range cfg.modes {
		if mode != "nftables" && mode != "iptables" {
			return cfg, fmt.Errorf("-modes: %q is not nftables or iptables", mode)
		}
	}
	if cfg.services < 20 || cfg.endpoints < 1 || cfg.changeSamples < 1 || cfg.changeSamples > cfg.services-12 {
		return cfg, errors.New("need -services >= 20, -endpoints >= 1 and 1 <= -change-samples <= services-12")
	}
	if cfg.syncRuns < 1 {
		return cfg, errors.New("-sync-runs must be at least 1")
	}
	if cfg.connects < 1 || cfg.transferMiB < 1 || cfg.rateWorkers < 1 || cfg.rateDuration <= 0 {
		return cfg, errors.New("-connects, -transfer-mib, -rate-workers and -rate-duration must be positive")
	}
	if _, err := os.Stat(cfg.upstream); err != nil {
		return cfg, fmt.Errorf("upstream kube-proxy: %w (run hack/kube-proxy.sh)", err)
	}
	if cfg.command == "" {
		cfg.command = strings.Join(os.Args, " ")
		if full {
			cfg.command = "BENCH_FULL=1 " + cfg.command
		}
	} else if full && !strings.Contains(cfg.command, "BENCH_FULL=1") {
		cfg.command = "BENCH_FULL=1 " + cfg.command
	}
	return cfg, nil
}

func main() {
	cfg, err := parseConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sidebyside:", err)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "sidebyside: needs root (network namespaces); skipped")
		os.Exit(0)
	}
	if err := run(cfg); err != nil {
		klog.ErrorS(err, "Side-by-side benchmark failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

// loadAverage returns the first three fields of /proc/loadavg.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return "?"
	}
	return strings.Join(fields[:3], " ")
}

// newEnvironment describes this machine and checkout.
func newEnvironment(cfg config) environment {
	upstream := commandOutput("", cfg.upstream, "--version")
	return environment{
		date:       time.Now().Format("2006-01-02 15:04 MST"),
		command:    cfg.command,
		commit:     commandOutput("", "git", "rev-parse", "--short", "HEAD") + dirtyMark(),
		kernel:     commandOutput("", "uname", "-r"),
		upstream:   upstream,
		cpus:       cpuCount(),
		memGiB:     memTotalGiB(),
		loadBefore: loadAverage(),
	}
}

// dirtyMark is "+dirty" when the work tree has uncommitted changes.
func dirtyMark() string {
	if out := commandOutput("", "git", "status", "--porcelain", "--untracked-files=no"); out != "" && out != "?" {
		return "+dirty"
	}
	return ""
}

// cpuCount is nproc's answer.
func cpuCount() int {
	n, _ := strconv.Atoi(commandOutput("", "nproc"))
	return n
}
