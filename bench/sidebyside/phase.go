package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// Names of the two proxies compared.
const (
	upstreamName  = "upstream"
	nodeproxyName = "nodeproxy"
)

// proxyImpl is one proxy under test: its name and its binary ("" builds ./cmd/proxy).
type proxyImpl struct {
	name   string
	binary string
}

// commonProxyArgs are added to the harness's flags for both proxies.
// --conntrack-max-per-core=0 leaves the conntrack table size alone: the limit and hash size
// are host-wide, and a benchmark must not change the host.
var commonProxyArgs = []string{"--conntrack-max-per-core=0"}

// bench holds the running cluster and what the phases share.
type bench struct {
	cfg      config
	c        *cluster.Cluster
	client   kubernetes.Interface
	deadline time.Time
	// latencyIP and lastIP are the ClusterIPs of latencyService and lastService.
	latencyIP, lastIP string
	// targets are the filler Services moved onto the pod in the change-latency samples.
	targets []string
	// targetIPs are their ClusterIPs.
	targetIPs map[string]string
	// waitCap caps each wait of the current mode (see fairCap); caps records it by mode.
	waitCap time.Duration
	caps    map[string]time.Duration
}

// teardownReserve is the part of the time budget kept for stopping proxies and the cluster.
const teardownReserve = time.Minute

// fairCap sets the cap of the large-stage runs of mode: -cap, or less when the time budget
// left does not hold that for every remaining run (two per mode left, this one included), so
// that both proxies of a mode always get the same cap.
func (b *bench) fairCap(mode string, modesLeft int) {
	share := (time.Until(b.deadline) - teardownReserve) / time.Duration(2*modesLeft)
	b.waitCap = max(min(b.cfg.cap, share), 0).Round(time.Second)
	b.caps[mode] = b.waitCap
	if b.waitCap < b.cfg.cap {
		klog.InfoS("Time budget: lowering the cap so both proxies get the same", "mode", mode, "cap", b.waitCap)
	}
}

// waitContext returns a context bounded by limit and by the time budget; ok is false when the
// budget is already spent.
func (b *bench) waitContext(limit time.Duration) (context.Context, context.CancelFunc, time.Duration, bool) {
	remaining := time.Until(b.deadline)
	if remaining <= 0 || limit <= 0 {
		return nil, nil, 0, false
	}
	limit = min(limit, remaining)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	return ctx, cancel, limit, true
}

// startProxy starts impl in mode on the bench node (no pod agent) and returns the node and
// the moment the proxy process started.
func (b *bench) startProxy(impl proxyImpl, mode string) (*cluster.Node, time.Time, error) {
	node, err := b.c.StartNode(benchNode, cluster.NodeOptions{
		Mode:         mode,
		ProxyBinary:  impl.binary,
		ProxyArgs:    commonProxyArgs,
		SkipPodAgent: true,
		SkipWait:     true,
	})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("starting %s in %s mode: %w", impl.name, mode, err)
	}
	started, err := processStart(node.Proxy.Pid())
	if err != nil {
		return node, time.Time{}, errors.Join(err, b.c.StopNode(benchNode))
	}
	return node, started, nil
}

// stopProxy stops the proxy of the bench node, logging a failure (the phase goes on).
func (b *bench) stopProxy() {
	if err := b.c.StopNode(benchNode); err != nil {
		klog.ErrorS(err, "Stopping the proxy")
	}
}

// timeToReach measures from `from` until addr answers through the proxy, within limit and the
// time budget. The figure is in seconds.
func (b *bench) timeToReach(node *cluster.Node, addr string, from time.Time, limit time.Duration) figure {
	ctx, cancel, limit, ok := b.waitContext(limit)
	if !ok {
		return skippedFigure("time budget spent")
	}
	defer cancel()
	at, err := waitReachable(ctx, b.c, addr, node.Proxy.Done())
	switch {
	case errors.Is(err, errCapped):
		return cappedFigure(limit.Seconds())
	case err != nil:
		klog.ErrorS(err, "Proxy failed", "proxy", node.Proxy.Name, "logTail", node.Proxy.LogTail(20))
		return failedFigure(err)
	}
	return measuredFigure(at.Sub(from).Seconds(), "")
}

// runSmall measures one proxy in one mode with the 10 services of the small stage: first
// sync, connect latency and, when withDataPath, throughput and the connection rate.
func (b *bench) runSmall(impl proxyImpl, mode string, r *proxyResult, withDataPath bool) error {
	if err := resetNode(b.c); err != nil {
		return err
	}
	node, started, err := b.startProxy(impl, mode)
	if err != nil {
		return err
	}
	defer b.stopProxy()
	latencyAddr := net.JoinHostPort(b.latencyIP, "80")
	r.firstSyncSmall = b.timeToReach(node, latencyAddr, started, b.cfg.cap)
	klog.InfoS("First sync, 10 services", "proxy", impl.name, "mode", mode, "seconds", r.firstSyncSmall.value, "status", r.firstSyncSmall.status)
	if r.firstSyncSmall.status != measured {
		return nil
	}
	r.connectSmall = connectLatency(b.c, latencyAddr, b.cfg.connects)
	r.connectDirect = connectLatency(b.c, net.JoinHostPort(podIP, strconv.Itoa(echoPort)), b.cfg.connects)
	if !withDataPath {
		return nil
	}
	sinkAddr := net.JoinHostPort(b.latencyIP, "81")
	size := int64(b.cfg.transferMiB) << 20
	r.throughput = b.medianThroughput(sinkAddr, size)
	r.connectionsPerSecond = figureOf(connectionRate(b.c, latencyAddr, b.cfg.rateWorkers, b.cfg.rateDuration))
	klog.InfoS("Data path", "proxy", impl.name, "mode", mode, "MiBps", r.throughput.value, "connPerSecond", r.connectionsPerSecond.value)
	return nil
}

// throughputRuns is how many transfers the throughput figure takes the median of.
const throughputRuns = 3

// medianThroughput is the median of throughputRuns transfers of size bytes to the sink at addr,
// in MiB/s, with the range as its note.
func (b *bench) medianThroughput(addr string, size int64) figure {
	var rates []float64
	for range throughputRuns {
		rate, err := throughput(b.c, addr, size, 2*time.Minute)
		if err != nil {
			return failedFigure(err)
		}
		rates = append(rates, rate)
	}
	return measuredFigure(median(rates), fmt.Sprintf("%.0f–%.0f", slices.Min(rates), slices.Max(rates)))
}

// apiContext bounds one short series of API calls.
func apiContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}

// figureOf turns a value and its error into a figure.
func figureOf(value float64, err error) figure {
	if err != nil {
		return failedFigure(err)
	}
	return measuredFigure(value, "")
}

// resetAPI puts the API objects back as every large-stage run expects them at its start: the
// change targets on fake endpoints and no restart Service.
func (b *bench) resetAPI() error {
	ctx, cancel := apiContext()
	defer cancel()
	for i, name := range b.targets {
		if err := setEndpoints(ctx, b.client, name, fakeEndpoints(i, b.cfg.endpoints)); err != nil {
			return err
		}
	}
	return deleteService(ctx, b.client, restartService)
}

// runLarge measures one proxy in one mode at full scale: first sync on a fresh node with its
// memory and CPU, change latency, connect latency, its own sync metric, then the first sync
// after a restart over the rules it left.
func (b *bench) runLarge(impl proxyImpl, mode string, r *proxyResult) error {
	if err := b.resetAPI(); err != nil {
		return err
	}
	if err := resetNode(b.c); err != nil {
		return err
	}
	node, started, err := b.startProxy(impl, mode)
	if err != nil {
		return err
	}
	monitor := startTreeMonitor(node.Proxy.Pid())
	r.firstSync = b.timeToReach(node, net.JoinHostPort(b.lastIP, "80"), started, b.waitCap)
	klog.InfoS("First sync", "proxy", impl.name, "mode", mode, "seconds", r.firstSync.value, "status", r.firstSync.status)
	r.cpuFirstSync = figureOf(treeCPUSeconds(node.Proxy.Pid()))
	if r.firstSync.status == measured {
		before, beforeErr := scrapeSyncMetricOnceExposed(b.c, node)
		r.change = b.changeLatency(node)
		r.changeSync = changeSyncMean(b.c, node, before, beforeErr)
		r.connectLarge = connectLatency(b.c, net.JoinHostPort(b.latencyIP, "80"), b.cfg.connects)
		if m, err := scrapeSyncMetric(b.c, node); err != nil {
			r.syncMean = failedFigure(err)
		} else if m.count > 0 {
			r.syncMean = measuredFigure(m.sum/m.count*1000, fmt.Sprintf("n=%.0f", m.count))
		}
	}
	r.cpuTotal = figureOf(treeCPUSeconds(node.Proxy.Pid()))
	r.peakRSS = measuredFigure(monitor.Stop(), "")
	b.stopProxy()
	if r.firstSync.status != measured {
		// Memory and CPU until the cap: comparable between the proxies of a mode, which get
		// the same cap, but not the cost of a whole sync.
		for _, f := range []*figure{&r.peakRSS, &r.cpuFirstSync, &r.cpuTotal} {
			if f.status == measured {
				f.note = "until the cap"
			}
		}
		return nil
	}
	if r.restartSync, err = b.restart(impl, mode); err != nil {
		return err
	}
	b.repeatFirstSyncs(impl, mode, r)
	return nil
}

// scrapeSyncMetricOnceExposed scrapes the sync metric, waiting up to 5 s for it to appear:
// traffic may follow the first sync before the proxy records the sync's duration, and a
// labelled histogram is not exposed before its first observation.
func scrapeSyncMetricOnceExposed(c *cluster.Cluster, node *cluster.Node) (syncMetric, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, err := scrapeSyncMetric(c, node)
		if err == nil || time.Now().After(deadline) {
			return m, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// changeSyncMean is the mean duration of the syncs since before was scraped (the change
// samples' syncs), in ms, from the proxy's own sync_proxy_rules_duration metric.
func changeSyncMean(c *cluster.Cluster, node *cluster.Node, before syncMetric, beforeErr error) figure {
	after, err := scrapeSyncMetric(c, node)
	switch {
	case beforeErr != nil:
		return failedFigure(beforeErr)
	case err != nil:
		return failedFigure(err)
	case after.count <= before.count:
		return failedFigure(errors.New("no sync during the change samples"))
	}
	n := after.count - before.count
	return measuredFigure((after.sum-before.sum)/n*1000, fmt.Sprintf("n=%.0f", n))
}

// changeLatency moves each change target onto the real pod with one API write and measures
// until a new connection to it reaches the pod. Samples are spaced so that each starts with
// the proxy idle (past its minimum sync period). The figure is the median, in seconds.
func (b *bench) changeLatency(node *cluster.Node) figure {
	var samples []float64
	for _, name := range b.targets {
		time.Sleep(2 * time.Second)
		ctx, cancel := apiContext()
		start := time.Now()
		err := setEndpoints(ctx, b.client, name, podEndpoints())
		cancel()
		if err != nil {
			return failedFigure(err)
		}
		f := b.timeToReach(node, net.JoinHostPort(b.targetIPs[name], "80"), start, b.waitCap)
		if f.status != measured {
			return f
		}
		samples = append(samples, f.value)
	}
	lo, hi := samples[0], samples[0]
	for _, s := range samples {
		lo, hi = min(lo, s), max(hi, s)
	}
	return measuredFigure(median(samples), fmt.Sprintf("%.2f–%.2f", lo, hi))
}

// restart creates restartService on the pod while the proxy is stopped (so the rules left
// behind lack it), starts the proxy again and measures until the new Service reaches the pod.
func (b *bench) restart(impl proxyImpl, mode string) (figure, error) {
	ctx, cancel := apiContext()
	defer cancel()
	ip, err := createService(ctx, b.client, restartService, false, podEndpoints())
	if err != nil {
		return failedFigure(err), nil
	}
	node, started, err := b.startProxy(impl, mode)
	if err != nil {
		return failedFigure(err), err
	}
	defer b.stopProxy()
	f := b.timeToReach(node, net.JoinHostPort(ip, "80"), started, b.waitCap)
	klog.InfoS("First sync after a restart", "proxy", impl.name, "mode", mode, "seconds", f.value, "status", f.status)
	return f, nil
}
