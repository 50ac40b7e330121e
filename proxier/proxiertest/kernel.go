package proxiertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
)

// Probe repetition bounds.
const (
	// minReachProbes is how many probes a Reach case gets at least, so that an endpoint it
	// does not allow is very likely hit ((1/2)^16 to miss one of two endpoints).
	minReachProbes = 16
	// maxProbes bounds the probes of a Reach case until every allowed endpoint was seen.
	maxProbes = 30
	// stickyProbes is how many probes of a Sticky case must all land on one endpoint.
	stickyProbes = 10
	// syncTimeout bounds the backend's first sync.
	syncTimeout = 2 * time.Minute
)

// NewBackendFunc creates the backend under test for RunKernel. nodeNS is node-a's network
// namespace; it belongs to the harness, which closes it (and deletes the namespace) after the
// backend's own t.Cleanup functions have run. The backend must program that namespace only.
type NewBackendFunc = func(t *testing.T, nodeNS netns.NsHandle, cfg Config) proxier.Backend

// RunKernel runs every TCP and UDP Case of cfg.Family against the real kernel, one subtest
// per Case; it skips unless run as root. It builds the topology of the package doc in
// throwaway network namespaces named "np-<pid>-<random>-…", starts echo servers in every
// endpoint pod, creates the backend with newBackend in node-a's namespace, feeds it the World
// through proxier.Core, runs one SyncNow, then probes: FromLocalPod from the client pod,
// FromNode from node-a (bound to NodeProbeIP), FromOutside from the outside client,
// FromEndpointPod from the Service's first local endpoint pod. Everything is removed in
// t.Cleanup, also on failure. SCTP cases are skipped (no SCTP probe; often no SCTP sockets).
func RunKernel(t *testing.T, cfg Config, newBackend NewBackendFunc, opts ...Option) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("RunKernel needs root: it creates network namespaces, veths and a proxy ruleset")
	}
	cases, skip := casesFor(t, cfg, opts)
	env := startKernel(t, cfg, newBackend)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if reason, ok := skip[c.Name]; ok {
				t.Skip(reason)
			}
			if c.Protocol == v1.ProtocolSCTP {
				t.Skip(sctpSkipReason())
			}
			for _, problem := range env.check(c) {
				t.Errorf("%s %s %s → %s:%d: %s", c.Service, c.From, c.Protocol, DestinationAddr(cfg, c), c.Port, problem)
			}
		})
	}
}

// kernelEnv is one programmed topology.
type kernelEnv struct {
	cfg     Config
	world   *WorldState
	topo    *topology
	servers *echoServers
}

// startKernel builds the topology, starts the echo servers and the backend, and syncs once.
// Its cleanup removes everything and then checks that no namespace of the run is left.
func startKernel(t *testing.T, cfg Config, newBackend NewBackendFunc) *kernelEnv {
	t.Helper()
	prefix := fmt.Sprintf("np-%d-%04x-", os.Getpid(), rand.IntN(0x10000))
	env := &kernelEnv{cfg: cfg, world: World(cfg.Family), topo: newTopology(cfg.Family, prefix), servers: &echoServers{}}
	t.Cleanup(func() { env.close(t, prefix) })

	pods := collectPods(env.world, cfg.Family)
	if err := env.topo.build(pods); err != nil {
		t.Fatalf("Building the test topology: %v", err)
	}
	for _, pod := range pods {
		for _, port := range pod.ports {
			if err := env.servers.start(env.topo.pods[pod.ip], pod.ip, port); err != nil {
				t.Fatalf("Starting echo servers: %v", err)
			}
		}
	}

	core, err := proxier.NewCore(proxier.CoreConfig{
		NodeName:      cfg.NodeName,
		Families:      []v1.IPFamily{cfg.Family},
		MinSyncPeriod: 0,
		SyncPeriod:    30 * time.Second,
	}, newBackend(t, env.topo.nodeA, cfg))
	if err != nil {
		t.Fatalf("Creating the proxy core: %v", err)
	}
	feedWorld(core, env.world)
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	defer cancel()
	if err := core.SyncNow(ctx); err != nil {
		t.Fatalf("First sync of the backend: %v", err)
	}
	return env
}

// feedWorld delivers the World to core as informers would: node, Services, slices, synced.
func feedWorld(core *proxier.Core, w *WorldState) {
	core.OnNodeAdd(w.Node)
	for _, svc := range w.Services {
		core.OnServiceAdd(svc)
	}
	for _, s := range w.Slices {
		core.OnEndpointSliceAdd(s)
	}
	core.OnServiceSynced()
	core.OnEndpointSlicesSynced()
}

// close stops the servers, removes the namespaces and checks that none of the run is left.
func (e *kernelEnv) close(t *testing.T, prefix string) {
	e.servers.stop()
	if err := e.topo.close(); err != nil {
		t.Errorf("Removing the test topology: %v", err)
	}
	left, err := namedNSWithPrefix(prefix)
	if err != nil {
		t.Errorf("Checking for leftover namespaces: %v", err)
	}
	if len(left) > 0 {
		t.Errorf("Network namespaces left behind: %v", left)
	}
}

// check probes c and returns what is wrong (nil: the kernel did what c wants).
func (e *kernelEnv) check(c Case) []string {
	ns, bind, err := e.source(c)
	if err != nil {
		return []string{err.Error()}
	}
	dst := netip.AddrPortFrom(DestinationAddr(e.cfg, c), uint16(c.Port))
	return judge(c, func() observation { return probe(ns, c.Protocol, bind, dst) })
}

// source returns the namespace a Case's probe starts in and the address to bind (if any).
func (e *kernelEnv) source(c Case) (netns.NsHandle, netip.Addr, error) {
	switch c.From {
	case FromLocalPod:
		return e.topo.pods[LocalPodIP(e.cfg.Family)], netip.Addr{}, nil
	case FromNode:
		return e.topo.nodeA, NodeProbeIP(e.cfg.Family), nil
	case FromOutside:
		return e.topo.client, netip.Addr{}, nil
	case FromEndpointPod:
		ip := firstLocalEndpoint(e.world, c.Service, e.cfg.NodeName)
		if ns, ok := e.topo.pods[ip]; ok {
			return ns, netip.Addr{}, nil
		}
		return netns.None(), netip.Addr{}, fmt.Errorf("service %s has no local endpoint pod to probe from", c.Service)
	}
	return netns.None(), netip.Addr{}, fmt.Errorf("unknown probe source %q", c.From)
}

// judge probes c until its expectation is settled, at most maxProbes times, and returns what
// is wrong (nil: pass). Drop, Reject and AnyOne need one probe; Sticky needs stickyProbes on
// one endpoint; any other Reach needs at least minReachProbes probes, all on allowed
// endpoints, and every allowed endpoint seen.
func judge(c Case, probe func() observation) []string {
	want := c.Want
	allowed, err := normalizeEndpoints(want.Endpoints)
	if err != nil {
		return []string{"bad Case: " + err.Error()}
	}
	attempts := 1
	switch {
	case want.Verdict != Reach || want.AnyOne:
	case want.Sticky:
		attempts = stickyProbes
	default:
		attempts = maxProbes
	}
	seen := map[string]bool{}
	for i := 1; i <= attempts; i++ {
		o := probe()
		if problem := judgeOne(want, allowed, o); problem != "" {
			return []string{fmt.Sprintf("probe %d: %s", i, problem)}
		}
		if want.Verdict != Reach {
			return nil
		}
		seen[o.endpoint] = true
		if want.Sticky && len(seen) > 1 {
			return []string{fmt.Sprintf("probe %d: not sticky: saw %v", i, sortedKeys(seen))}
		}
		if want.AnyOne || (!want.Sticky && i >= minReachProbes && len(seen) == len(allowed)) {
			return nil
		}
	}
	if !want.Sticky && len(seen) < len(allowed) {
		return []string{fmt.Sprintf("after %d probes saw only %v of %v", attempts, sortedKeys(seen), allowed)}
	}
	return nil
}

// judgeOne checks one observation against want; allowed is the normalized endpoint list.
func judgeOne(want Want, allowed []string, o observation) string {
	if o.err != nil {
		return o.err.Error()
	}
	if o.verdict != want.Verdict {
		detail := ""
		if o.verdict == Reach {
			detail = fmt.Sprintf(" (reached %s)", o.endpoint)
		}
		return fmt.Sprintf("verdict %s%s, want %s", o.verdict, detail, want.Verdict)
	}
	if o.verdict != Reach {
		return ""
	}
	if !isSubset([]string{o.endpoint}, allowed) {
		return fmt.Sprintf("reached %s, want one of %v", o.endpoint, allowed)
	}
	if masq := o.seen != o.own; masq != want.Masquerade {
		return fmt.Sprintf("%s saw source %s (probe's own address %s): masquerade %t, want %t",
			o.endpoint, o.seen, o.own, masq, want.Masquerade)
	}
	return ""
}

// sortedKeys returns the keys of a set, sorted.
func sortedKeys(set map[string]bool) []string {
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	out, _ := normalizeEndpoints(keys)
	return out
}

// sctpSkipReason says why SCTP cases are not probed on this machine.
func sctpSkipReason() string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return "no kernel SCTP sockets on this machine"
	}
	unix.Close(fd)
	return "the kernel harness has no SCTP probe; SCTP cases are traced only"
}
