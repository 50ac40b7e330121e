package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// smallStageFillers is how many filler Services the small stage has besides latencyService.
const smallStageFillers = 9

// run brings the cluster up, measures, tears everything down and reports.
func run(cfg config) (err error) {
	began := time.Now()
	env := newEnvironment(cfg)
	klog.InfoS("Starting the control plane")
	c, err := cluster.New(cluster.Options{})
	if err != nil {
		return fmt.Errorf("starting the e2e cluster: %w", err)
	}
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
		stopErr := c.Stop()
		if stopErr == nil {
			stopErr = c.CheckLeaks()
		}
		err = errors.Join(err, stopErr)
	}()
	if listeners, err = setUpPod(c); err != nil {
		return err
	}
	b, err := newBench(cfg, c, began.Add(cfg.budget))
	if err != nil {
		return err
	}
	results, caps := b.measure()
	env.caps = caps
	env.loadAfter = loadAverage()
	env.wall = time.Since(began)
	report := renderReport(cfg, env, results)
	fmt.Println(report)
	if cfg.results != "" {
		if err := appendResults(cfg.results, report); err != nil {
			return err
		}
		klog.InfoS("Appended the report", "file", cfg.results)
	}
	return nil
}

// newBench makes a fast API client (many objects to create) and the small stage's objects.
func newBench(cfg config, c *cluster.Cluster, deadline time.Time) (*bench, error) {
	restConfig := c.RESTConfig()
	restConfig.QPS, restConfig.Burst = 2000, 4000
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return nil, fmt.Errorf("creating the bench client: %w", err)
	}
	b := &bench{cfg: cfg, c: c, client: client, deadline: deadline, targetIPs: map[string]string{}, caps: map[string]time.Duration{}}
	ctx, cancel := apiContext()
	defer cancel()
	if err := createNamespace(ctx, client); err != nil {
		return nil, err
	}
	if b.latencyIP, err = createService(ctx, client, latencyService, true, podEndpoints()); err != nil {
		return nil, err
	}
	ips, err := createFillers(ctx, client, 0, smallStageFillers, cfg.endpoints)
	if err != nil {
		return nil, err
	}
	for i := range cfg.changeSamples {
		b.targets = append(b.targets, fillerName(i))
		b.targetIPs[fillerName(i)] = ips[i]
	}
	return b, nil
}

// measure runs the small stage, creates the rest of the Services, runs the large stage and
// returns the figures by mode and proxy.
func (b *bench) measure() (map[string]map[string]*proxyResult, map[string]time.Duration) {
	impls := []proxyImpl{{name: nodeproxyName}, {name: upstreamName, binary: b.cfg.upstream}}
	if b.cfg.skipUpstream {
		impls = impls[:1]
	}
	results := map[string]map[string]*proxyResult{}
	for _, mode := range slices.Concat(b.cfg.modes, []string{"userspace"}) {
		results[mode] = map[string]*proxyResult{upstreamName: newProxyResult(), nodeproxyName: newProxyResult()}
	}
	for _, mode := range b.cfg.modes {
		for _, impl := range impls {
			dataPath := b.cfg.userspace && mode == "nftables" && impl.name == nodeproxyName
			b.logFailure(impl, mode, b.runSmall(impl, mode, results[mode][impl.name], dataPath))
		}
	}
	if b.cfg.userspace {
		b.logFailure(impls[0], "userspace", b.runSmall(impls[0], "userspace", results["userspace"][nodeproxyName], true))
	}
	if err := b.createLargeStage(); err != nil {
		klog.ErrorS(err, "Creating the Services of the large stage")
		return results, b.caps
	}
	for i, mode := range b.cfg.modes {
		b.fairCap(mode, len(b.cfg.modes)-i)
		for _, impl := range impls {
			b.logFailure(impl, mode, b.runLarge(impl, mode, results[mode][impl.name]))
		}
	}
	return results, b.caps
}

// logFailure logs a phase that could not run; its figures stay "not measured".
func (b *bench) logFailure(impl proxyImpl, mode string, err error) {
	if err != nil {
		klog.ErrorS(err, "Phase failed", "proxy", impl.name, "mode", mode)
	}
}

// createLargeStage creates the remaining filler Services, then lastService on the pod, so the
// cluster holds N Services in all (plus default/kubernetes).
func (b *bench) createLargeStage() error {
	began := time.Now()
	ctx, cancel, _, ok := b.waitContext(10 * time.Minute)
	if !ok {
		return errors.New("time budget spent before the large stage")
	}
	defer cancel()
	fillers := b.cfg.services - 2
	if _, err := createFillers(ctx, b.client, smallStageFillers, fillers, b.cfg.endpoints); err != nil {
		return err
	}
	ip, err := createService(ctx, b.client, lastService, false, podEndpoints())
	if err != nil {
		return err
	}
	b.lastIP = ip
	klog.InfoS("Created the Services", "services", b.cfg.services, "endpointsEach", b.cfg.endpoints, "took", time.Since(began).Round(time.Millisecond))
	fmt.Fprintf(os.Stderr, "created %d Services with their EndpointSlices in %v\n", b.cfg.services, time.Since(began).Round(time.Second))
	return nil
}
