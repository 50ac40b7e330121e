package nftables

import (
	"context"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/proxiertest"
)

// traceCase is one packet and what must happen to it, as summary() renders it.
type traceCase struct {
	name     string
	src      netip.Addr
	dst      string
	port     int32
	fromHost bool
	proto    v1.Protocol
	want     string
}

func runTraceCases(t *testing.T, env *testEnv, cases []traceCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env.t = t
			proto := tc.proto
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			if got := env.trace(tc.src, tc.dst, tc.port, tc.fromHost, proto); got != tc.want {
				t.Errorf("%s → %s:%d: got %q, want %q", tc.src, tc.dst, tc.port, got, tc.want)
			}
		})
	}
}

// addWorld programs a small world of Services covering the features.
func addWorld(env *testEnv) {
	local, remote, remote2 := ep{ip: "10.0.1.1"}, ep{ip: "10.0.2.1"}, ep{ip: "10.0.2.2"}
	env.add(makeService("plain", "172.30.0.1"), makeSlice("plain", local, remote))
	env.add(makeService("np", "172.30.0.2", withNodePort(30002)), makeSlice("np", local, remote))
	env.add(makeService("np-local", "172.30.0.3", withNodePort(30003), withETPLocal, withExternalIPs("1.2.3.3")), makeSlice("np-local", local, remote))
	env.add(makeService("np-local-remote", "172.30.0.4", withNodePort(30004), withETPLocal), makeSlice("np-local-remote", remote))
	env.add(makeService("lb", "172.30.0.5", withNodePort(30005), withLB("5.6.7.8"), withSourceRanges("203.0.113.0/25")), makeSlice("lb", remote))
	env.add(makeService("itp", "172.30.0.6", withITPLocal), makeSlice("itp", remote))
	env.add(makeService("aff", "172.30.0.7", withAffinity(60)), makeSlice("aff", remote, remote2))
	env.add(makeService("none", "172.30.0.8", withNodePort(30008)), nil)
	udp := makeSlice("udp", remote)
	udp.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
	env.add(makeService("udp", "172.30.0.9", withProtocol(v1.ProtocolUDP)), udp)
}

// TestTrace traces packets through the rules the Proxier programs (IPv4, ClusterCIDR detector).
func TestTrace(t *testing.T) {
	env := newTestEnv(t, testConfig())
	addWorld(env)
	env.sync(true)
	pod, out, node := testLocalPod, testOutside, testNodeIP
	both := "10.0.1.1:8080 10.0.2.1:8080"
	runTraceCases(t, env, []traceCase{
		{name: "pod to ClusterIP", src: pod, dst: "172.30.0.1", port: 80, want: "accept " + both},
		{name: "outside to ClusterIP is masqueraded", src: out, dst: "172.30.0.1", port: 80, want: "accept " + both + " masq"},
		{name: "node to ClusterIP is masqueraded", src: node, dst: "172.30.0.1", port: 80, fromHost: true, want: "accept " + both + " masq"},
		{name: "unknown port of a ClusterIP is rejected", src: pod, dst: "172.30.0.1", port: 81, want: "reject"},
		{name: "other protocol of a ClusterIP is rejected", src: pod, dst: "172.30.0.1", port: 80, proto: v1.ProtocolUDP, want: "reject"},
		{name: "unallocated service IP is dropped", src: pod, dst: "172.30.0.200", port: 80, want: "drop"},
		{name: "hairpin", src: netip.MustParseAddr("10.0.1.1"), dst: "172.30.0.1", port: 80, want: "accept " + both + " hairpin"},
		{name: "NodePort from outside", src: out, dst: "192.168.0.2", port: 30002, want: "accept " + both + " masq"},
		{name: "NodePort from a pod", src: pod, dst: "192.168.0.2", port: 30002, want: "accept " + both + " masq"},
		{name: "NodePort from the node", src: node, dst: "192.168.0.2", port: 30002, fromHost: true, want: "accept " + both + " masq"},
		{name: "NodePort on loopback is not served", src: node, dst: "127.0.0.1", port: 30002, fromHost: true, want: "accept"},
		{name: "eTP Local NodePort from outside: local endpoint, client IP kept", src: out, dst: "192.168.0.2", port: 30003, want: "accept 10.0.1.1:8080"},
		{name: "eTP Local NodePort from a pod: short-circuit", src: pod, dst: "192.168.0.2", port: 30003, want: "accept " + both},
		{name: "eTP Local NodePort from the node: short-circuit, masqueraded", src: node, dst: "192.168.0.2", port: 30003, fromHost: true, want: "accept " + both + " masq"},
		{name: "eTP Local external IP from outside", src: out, dst: "1.2.3.3", port: 80, want: "accept 10.0.1.1:8080"},
		{name: "eTP Local external IP from a pod", src: pod, dst: "1.2.3.3", port: 80, want: "accept " + both},
		{name: "eTP Local without local endpoints drops outside traffic", src: out, dst: "192.168.0.2", port: 30004, want: "drop"},
		{name: "eTP Local without local endpoints: pods short-circuit", src: pod, dst: "192.168.0.2", port: 30004, want: "accept 10.0.2.1:8080"},
		{name: "LB IP from an allowed source", src: out, dst: "5.6.7.8", port: 80, want: "accept 10.0.2.1:8080 masq"},
		{name: "LB IP from a source outside the ranges", src: netip.MustParseAddr("203.0.113.200"), dst: "5.6.7.8", port: 80, want: "drop"},
		{name: "LB IP from the node (not in the ranges)", src: node, dst: "5.6.7.8", port: 80, fromHost: true, want: "drop"},
		{name: "NodePort of an LB ignores the source ranges", src: netip.MustParseAddr("203.0.113.200"), dst: "192.168.0.2", port: 30005, want: "accept 10.0.2.1:8080 masq"},
		{name: "iTP Local without local endpoints drops ClusterIP traffic", src: pod, dst: "172.30.0.6", port: 80, want: "drop"},
		{name: "affinity", src: pod, dst: "172.30.0.7", port: 80, want: "accept 10.0.2.1:8080 10.0.2.2:8080 sticky"},
		{name: "no endpoints: ClusterIP rejects", src: pod, dst: "172.30.0.8", port: 80, want: "reject"},
		{name: "no endpoints: NodePort rejects", src: out, dst: "192.168.0.2", port: 30008, want: "reject"},
		{name: "UDP", src: pod, dst: "172.30.0.9", port: 80, proto: v1.ProtocolUDP, want: "accept 10.0.2.1:8080"},
	})
}

// TestTraceDetectorsAndMasqueradeAll covers the interface detectors and masquerade-all.
func TestTraceDetectorsAndMasqueradeAll(t *testing.T) {
	tests := []struct {
		name     string
		detector proxier.LocalDetector
		masqAll  bool
		iif      string
		want     string
	}{
		{"bridge: from the bridge", proxier.LocalDetector{Mode: proxier.LocalModeBridgeInterface, Interface: "cbr0"}, false, "cbr0", "accept 10.0.2.1:8080"},
		{"bridge: from elsewhere", proxier.LocalDetector{Mode: proxier.LocalModeBridgeInterface, Interface: "cbr0"}, false, "eth0", "accept 10.0.2.1:8080 masq"},
		{"prefix: from a veth", proxier.LocalDetector{Mode: proxier.LocalModeInterfaceNamePrefix, Interface: "veth"}, false, "veth12", "accept 10.0.2.1:8080"},
		{"prefix: from elsewhere", proxier.LocalDetector{Mode: proxier.LocalModeInterfaceNamePrefix, Interface: "veth"}, false, "eth0", "accept 10.0.2.1:8080 masq"},
		{"no detector: nothing masqueraded", proxier.LocalDetector{}, false, "eth0", "accept 10.0.2.1:8080"},
		{"masquerade all", proxier.LocalDetector{Mode: proxier.LocalModeBridgeInterface, Interface: "cbr0"}, true, "cbr0", "accept 10.0.2.1:8080 masq"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Detectors = map[v1.IPFamily]proxier.LocalDetector{v1.IPv4Protocol: tc.detector}
			cfg.MasqueradeAll = tc.masqAll
			env := newTestEnv(t, cfg)
			env.add(makeService("a", "172.30.0.1"), makeSlice("a", ep{ip: "10.0.2.1"}))
			env.sync(true)
			p := Packet{Src: testLocalPod, Dst: netip.MustParseAddr("172.30.0.1"), Protocol: v1.ProtocolTCP, Port: 80, IIFName: tc.iif}
			res, err := env.fake.Trace(p, testNodeTrace)
			if err != nil {
				t.Fatal(err)
			}
			if got := summary(res); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestPacketFlowTracer runs the shared packet-flow cases against the tracer, in both families.
func TestPacketFlowTracer(t *testing.T) {
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		t.Run(string(family), func(t *testing.T) {
			cfg := proxiertest.NewConfig(family)
			fake := NewFake()
			p, err := NewWithConn(worldConfig(cfg, 0), fake)
			if err != nil {
				t.Fatal(err)
			}
			syncWorld(t, cfg, p)
			node := TraceNode{LocalAddrs: []netip.Addr{cfg.NodeIP, proxiertest.NodeProbeIP(family)}}
			proxiertest.RunTracer(t, cfg, func(c proxiertest.Case) proxiertest.Traced {
				return traceCase2Traced(t, fake, cfg, node, c)
			})
		})
	}
}

// worldConfig is the Config the packet-flow World assumes.
func worldConfig(cfg proxiertest.Config, netNSFd int) Config {
	f := cfg.Family
	return Config{
		Families:          []v1.IPFamily{f},
		NodeIPs:           []netip.Addr{cfg.NodeIP},
		Detectors:         map[v1.IPFamily]proxier.LocalDetector{f: {Mode: proxier.LocalModeClusterCIDR, CIDR: cfg.ClusterCIDR}},
		NodePortAddresses: map[v1.IPFamily][]netip.Prefix{f: cfg.NodePortAddresses},
		ServiceCIDRs:      []netip.Prefix{cfg.ServiceCIDR},
		MasqueradeBit:     cfg.MasqueradeBit,
		NetNSFd:           netNSFd,
	}
}

// syncWorld feeds the World to a Core driving p and syncs once.
func syncWorld(t *testing.T, cfg proxiertest.Config, p *Proxier) {
	t.Helper()
	core, err := proxier.NewCore(proxier.CoreConfig{NodeName: cfg.NodeName, Families: []v1.IPFamily{cfg.Family}, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second}, p)
	if err != nil {
		t.Fatal(err)
	}
	w := proxiertest.World(cfg.Family)
	core.OnNodeAdd(w.Node)
	for _, svc := range w.Services {
		core.OnServiceAdd(svc)
	}
	for _, s := range w.Slices {
		core.OnEndpointSliceAdd(s)
	}
	core.OnServiceSynced()
	core.OnEndpointSlicesSynced()
	if err := core.SyncNow(context.Background()); err != nil {
		t.Fatalf("syncing the World: %v", err)
	}
}

// traceCase2Traced traces a Case's packet and translates the result.
func traceCase2Traced(t *testing.T, fake *Fake, cfg proxiertest.Config, node TraceNode, c proxiertest.Case) proxiertest.Traced {
	p := Packet{Src: proxiertest.SourceAddr(cfg, c), Dst: c.Dst, Protocol: c.Protocol, Port: c.Port, FromHost: c.From == proxiertest.FromNode}
	if c.From == proxiertest.FromOutside {
		p.IIFName = "eth0"
	} else if !p.FromHost {
		p.IIFName = "cbr0"
	}
	res, err := fake.Trace(p, node)
	if err != nil {
		t.Errorf("tracing %s: %v", c.Name, err)
		return proxiertest.Traced{}
	}
	out := proxiertest.Traced{Masquerade: res.Masquerade, Sticky: res.Sticky}
	switch {
	case res.Verdict == TraceReject:
		out.Verdict = proxiertest.Reject
	case res.Verdict == TraceDrop || len(res.Endpoints) == 0:
		out.Verdict = proxiertest.Drop
	default:
		out.Verdict = proxiertest.Reach
		for _, ep := range res.Endpoints {
			out.Endpoints = append(out.Endpoints, ep.String())
		}
		out.Masquerade = out.Masquerade || len(res.Hairpin) == len(res.Endpoints)
	}
	return out
}
