package nftables

import (
	"errors"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
	"github.com/nodeproxy/nodeproxy/proxier/proxiertest"
)

// readbackConfigs are configurations whose static chains cover every rule shape: each
// detector, masquerade-all, NodePort ranges (byte-aligned, not, overlapping loopback).
func readbackConfigs() map[string]Config {
	v4 := testConfig()
	bridge := testConfig()
	bridge.Detectors = map[v1.IPFamily]proxier.LocalDetector{v1.IPv4Protocol: {Mode: proxier.LocalModeBridgeInterface, Interface: "cbr0"}}
	prefix := testConfig()
	prefix.Detectors = map[v1.IPFamily]proxier.LocalDetector{v1.IPv4Protocol: {Mode: proxier.LocalModeInterfaceNamePrefix, Interface: "veth"}}
	prefix.NodePortAddresses = map[v1.IPFamily][]netip.Prefix{v1.IPv4Protocol: {
		netip.MustParsePrefix("192.168.0.0/20"), netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("64.0.0.0/2"),
	}}
	all := testConfig()
	all.MasqueradeAll = true
	all.Detectors = nil
	v6 := worldConfig(proxiertest.NewConfig(v1.IPv6Protocol), 0)
	v6.NodePortAddresses[v1.IPv6Protocol] = append(v6.NodePortAddresses[v1.IPv6Protocol], netip.MustParsePrefix("2001:db8:1::/52"))
	return map[string]Config{"ipv4": v4, "bridge": bridge, "prefix": prefix, "masquerade-all": all, "ipv6": v6}
}

// everyChain returns the static chains and dynamic chains of every role and kind.
func everyChain(fc *familyConfig) []chain {
	out := fc.staticChains()
	for _, kind := range []frontendKind{kindVIP, kindVIPLocal, kindNodePort, kindNodePortLocal} {
		for _, id := range []chainID{
			{role: roleDNAT, kind: kind, n: 1}, {role: roleDNAT, kind: kind, n: 3},
			{role: roleSticky, kind: kind, n: 3, timeout: 60}, {role: roleExternal, kind: kind, n: 2},
			{role: roleExternalLocal, kind: kind, n: 2, timeout: 10800},
		} {
			for _, c := range id.withDeps(nil) {
				out = append(out, c.build(fc))
			}
		}
	}
	return out
}

// TestDecodeRuleInvertsEncodeRule: every rule nodeproxy writes decodes back to itself.
func TestDecodeRuleInvertsEncodeRule(t *testing.T) {
	for name, cfg := range readbackConfigs() {
		t.Run(name, func(t *testing.T) {
			fc := testFamilyConfig(t, cfg)
			n := 0
			for _, c := range everyChain(fc) {
				for i, ru := range c.rules {
					exprs, udata, err := encodeRule(fc.fam, ru, readbackSets{fam: fc.fam})
					if err != nil {
						t.Fatalf("chain %s rule %d: encoding: %v", c.name, i, err)
					}
					got, err := decodeRule(fc.fam, exprs, udata)
					if err != nil {
						t.Errorf("chain %s rule %q: %v", c.name, ru.render(fc.fam), err)
						continue
					}
					if !reflect.DeepEqual(got, ru) {
						t.Errorf("chain %s: decoded %q (%#v), want %q (%#v)", c.name, got.render(fc.fam), got, ru.render(fc.fam), ru)
					}
					n++
				}
			}
			if n < 40 {
				t.Errorf("only %d rules checked", n)
			}
		})
	}
}

// TestDecodeRuleRejectsForeignShapes: rules nodeproxy does not write are not decoded, even
// when they start like one of ours.
func TestDecodeRuleRejectsForeignShapes(t *testing.T) {
	fam := familyIPv4
	plain := func(ru rule) []expr.Any {
		exprs, _, err := encodeRule(fam, ru, readbackSets{fam: fam})
		if err != nil {
			t.Fatal(err)
		}
		return exprs
	}
	ctNew := plain(r(ctStateNew{}))
	lookup := plain(r(setMatch{key: []keyField{kDaddr}, set: setClusterIPs}))
	tests := map[string][]expr.Any{
		"counter":                 {&expr.Counter{}},
		"ct state established":    {ctNew[0], &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{2, 0, 0, 0}, Xor: make([]byte, 4)}, ctNew[2]},
		"lookup in a foreign set": {lookup[0], &expr.Lookup{SourceRegister: 1, SetName: "other"}},
		"lookup into register 2":  {lookup[0], &expr.Lookup{SourceRegister: 2, SetName: setClusterIPs}},
		"truncated":               ctNew[:2],
		"snat":                    {&expr.NAT{Type: expr.NATTypeSourceNAT, Family: 2, RegAddrMin: 1}},
		"dnat without map":        {lookup[0], &expr.NAT{Type: expr.NATTypeDestNAT, Family: 2, RegAddrMin: 1}},
		"masquerade not random":   {&expr.Masq{}},
		"reject tcp reset":        {&expr.Reject{Type: 1}},
		"verdict break":           {&expr.Verdict{Kind: expr.VerdictBreak}},
		"l4proto without lookup":  {&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}},
		"mark set without load":   {&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}},
	}
	for name, exprs := range tests {
		t.Run(name, func(t *testing.T) {
			if ru, err := decodeRule(fam, exprs, nil); err == nil {
				t.Errorf("decoded as %q, want an error", ru.render(fam))
			}
		})
	}
	t.Run("comment is kept", func(t *testing.T) {
		udata := userdata.AppendString(nil, userdata.TypeComment, "hello")
		ru, err := decodeRule(fam, ctNew, udata)
		if err != nil || ru.comment != "hello" {
			t.Errorf("got %+v, %v", ru, err)
		}
	})
}

// TestDecodeSetElement covers verdicts, values, ranges and malformed elements.
func TestDecodeSetElement(t *testing.T) {
	fam := familyIPv4
	vmap, data, ranges := fam.setIndex[mapServiceIPs], fam.setIndex[kindVIP.endpointsMap()], fam.setIndex[setFirewallAllow]
	key := keyBuf{}.addr(mustAddr("10.96.0.1")).proto(6).port(80).String()
	for _, want := range []element{
		{key: key, verd: goTo("dnat-vip-2"), comment: "ns/a:http"},
		{key: key, verd: verdictDropV},
	} {
		ge := gnftElement(vmap, want, false)
		ge.Val = verdictAttrs(t, ge.VerdictData)
		got, err := decodeSetElement(vmap, ge)
		if err != nil || got != want {
			t.Errorf("verdict element: got %+v, %v; want %+v", got, err, want)
		}
	}
	slotKey := keyBuf(key).slot(1).String()
	value := keyBuf{}.addr(mustAddr("10.244.1.2")).port(8080).String()
	if got, err := decodeSetElement(data, gnft.SetElement{Key: []byte(slotKey), Val: []byte(value)}); err != nil || got.value != value {
		t.Errorf("data element: got %+v, %v", got, err)
	}
	first := keyBuf(key).addr(mustAddr("203.0.113.0")).String()
	last := keyBuf(key).addr(mustAddr("203.0.113.127")).String()
	if got, err := decodeSetElement(ranges, gnft.SetElement{Key: []byte(first), KeyEnd: []byte(last)}); err != nil || got.keyEnd != last {
		t.Errorf("range element: got %+v, %v", got, err)
	}
	bad := map[string]struct {
		spec *setSpec
		el   gnft.SetElement
	}{
		"short key":       {vmap, gnft.SetElement{Key: []byte(key[:4])}},
		"no verdict":      {vmap, gnft.SetElement{Key: []byte(key)}},
		"short value":     {data, gnft.SetElement{Key: []byte(slotKey), Val: []byte(value[:4])}},
		"short range end": {ranges, gnft.SetElement{Key: []byte(first), KeyEnd: []byte(last[:8])}},
	}
	for name, tc := range bad {
		if got, err := decodeSetElement(tc.spec, tc.el); err == nil {
			t.Errorf("%s: decoded %+v, want an error", name, got)
		}
	}
}

// verdictAttrs encodes a verdict as the kernel lists it in an element's data (and
// google/nftables hands it over undecoded).
func verdictAttrs(t *testing.T, v *expr.Verdict) []byte {
	t.Helper()
	codes := map[expr.VerdictKind]int32{expr.VerdictGoto: -4, expr.VerdictJump: -3, expr.VerdictDrop: 0, expr.VerdictAccept: 1}
	b := make([]byte, 0, 32)
	attr := func(typ uint16, payload []byte) {
		n := 4 + len(payload)
		b = append(b, byte(n), byte(n>>8), byte(typ), byte(typ>>8))
		b = append(b, payload...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	code := codes[v.Kind]
	attr(1, []byte{byte(code >> 24), byte(code >> 16), byte(code >> 8), byte(code)})
	if v.Chain != "" {
		attr(2, append([]byte(v.Chain), 0))
	}
	return b
}

// TestUnrecognisedRuleStopsTheTrace: a trace that reaches an unrecognised rule fails naming
// the chain; traces that do not reach it are unaffected.
func TestUnrecognisedRuleStopsTheTrace(t *testing.T) {
	env := newTestEnv(t, testConfig())
	addWorld(env)
	env.sync(true)
	rs := rulesetOfFake(env.fake)
	tbl := rs.fake.tables[tableID{fam: familyIPv4, name: TableName}]
	c := *tbl.chains["dnat-vip-2"]
	c.rules = append([]rule{r(unrecognisedRule{chain: c.name})}, c.rules...)
	tbl.chains[c.name] = &c
	rs.unrecognised[familyIPv4] = []string{c.name}
	p := Packet{Src: testLocalPod, Dst: mustAddr("172.30.0.1"), Protocol: v1.ProtocolTCP, Port: 80}
	_, err := rs.Trace(p, testNodeTrace)
	var ue *UnrecognisedRuleError
	if !errors.As(err, &ue) || ue.Chain != "dnat-vip-2" || !strings.Contains(err.Error(), "table not written by this nodeproxy version?") {
		t.Errorf("two endpoints: got %v, want an unrecognised rule in dnat-vip-2", err)
	}
	p.Dst = mustAddr("172.30.0.9")
	p.Protocol = v1.ProtocolUDP
	if res, err := rs.Trace(p, testNodeTrace); err != nil || summary(res) != "accept 10.0.2.1:8080" {
		t.Errorf("one endpoint: got %q, %v", summary(res), err)
	}
}

// rulesetOfFake returns a Ruleset over a copy of a Fake's tables (so it can be changed).
func rulesetOfFake(f *Fake) *Ruleset {
	rs := &Ruleset{fake: NewFake(), unrecognised: map[*family][]string{}}
	for id, t := range f.tables {
		c := &fakeTable{chains: map[string]*chain{}, sets: t.sets}
		for name, ch := range t.chains {
			c.chains[name] = ch
		}
		rs.fake.tables[id] = c
	}
	return rs
}

// TestExplain explains traces over the state the Proxier writes for addWorld.
func TestExplain(t *testing.T) {
	cfg := testConfig()
	cfg.NodePortAddresses = map[v1.IPFamily][]netip.Prefix{v1.IPv4Protocol: {netip.MustParsePrefix("192.168.0.2/32")}}
	env := newTestEnv(t, cfg)
	addWorld(env)
	env.sync(true)
	rs := rulesetOfFake(env.fake)
	node := TraceNode{LocalAddrs: []netip.Addr{testNodeIP, mustAddr("192.168.5.5")}}
	pod, out, nodeIP := testLocalPod, testOutside, testNodeIP
	tests := []struct {
		name     string
		src      netip.Addr
		dst      string
		port     int32
		proto    v1.Protocol
		fromHost bool
		want     string
	}{
		{"ClusterIP from a pod", pod, "172.30.0.1", 80, "", false,
			"accept ns/plain:p80 ClusterIP eps=2 masq=false why=source is in the pod CIDR 10.0.0.0/8"},
		{"ClusterIP from outside", out, "172.30.0.1", 80, "", false,
			"accept ns/plain:p80 ClusterIP eps=2 masq=true why=source is not in the pod CIDR 10.0.0.0/8"},
		{"hairpin", mustAddr("10.0.1.1"), "172.30.0.1", 80, "", false,
			"accept ns/plain:p80 ClusterIP eps=2 masq=false why=source is in the pod CIDR 10.0.0.0/8; hairpin: masqueraded when it lands on itself (10.0.1.1:8080)"},
		{"unknown port", pod, "172.30.0.1", 81, "", false,
			"reject  eps=0 masq=false reason=172.30.0.1 is a ClusterIP, but no Service port 81/tcp is defined on it (ports: 80/tcp)"},
		{"unallocated", pod, "172.30.0.200", 80, "", false,
			"drop  eps=0 masq=false reason=172.30.0.200 is in the service CIDR 172.30.0.0/16 but is not an allocated ClusterIP"},
		{"no endpoints", pod, "172.30.0.8", 80, "", false,
			"reject ns/none:p80 ClusterIP eps=0 masq=false reason=Service ns/none:p80 has no endpoints"},
		{"NodePort without endpoints", out, "192.168.0.2", 30008, "", false,
			"reject ns/none:p80 NodePort eps=0 masq=false reason=Service ns/none:p80 has no endpoints"},
		{"NodePort", out, "192.168.0.2", 30002, "", false,
			"accept ns/np:p80 NodePort eps=2 masq=true why=externalTrafficPolicy Cluster: external traffic is masqueraded"},
		{"NodePort on another local address", out, "192.168.5.5", 30002, "", false,
			"accept  eps=0 masq=false reason=not a Service address: no nodeproxy rule matches (30002/tcp is a NodePort of Service ns/np:p80, but 192.168.5.5 is not a NodePort address of this node)"},
		{"eTP Local from outside", out, "1.2.3.3", 80, "", false,
			"accept ns/np-local:p80 external or LoadBalancer IP local eps=1 masq=false why=externalTrafficPolicy Local keeps the client address"},
		{"eTP Local from a pod", pod, "1.2.3.3", 80, "", false,
			"accept ns/np-local:p80 external or LoadBalancer IP local eps=2 masq=false why=source is a local pod: short-circuited to every endpoint, client address kept"},
		{"eTP Local from the node", nodeIP, "1.2.3.3", 80, "", true,
			"accept ns/np-local:p80 external or LoadBalancer IP local eps=2 masq=true why=traffic from the node itself (externalTrafficPolicy Local)"},
		{"eTP Local without local endpoints", out, "192.168.0.2", 30004, "", false,
			"drop ns/np-local-remote:p80 NodePort local eps=0 masq=false reason=externalTrafficPolicy Local and no local endpoints"},
		{"iTP Local without local endpoints", pod, "172.30.0.6", 80, "", false,
			"drop ns/itp:p80 ClusterIP eps=0 masq=false reason=internalTrafficPolicy Local and no local endpoints"},
		{"LB source not allowed", mustAddr("203.0.113.200"), "5.6.7.8", 80, "", false,
			"drop ns/lb:p80 LoadBalancer IP eps=0 masq=false reason=source 203.0.113.200 is not in the loadBalancerSourceRanges of Service ns/lb:p80"},
		{"affinity", pod, "172.30.0.7", 80, "", false,
			"accept ns/aff:p80 ClusterIP affinity=60 eps=2 masq=false why=source is in the pod CIDR 10.0.0.0/8"},
		{"not a Service", pod, "8.8.8.8", 53, v1.ProtocolUDP, false,
			"accept  eps=0 masq=false reason=not a Service address: no nodeproxy rule matches"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proto := tc.proto
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			p := Packet{Src: tc.src, Dst: mustAddr(tc.dst), Protocol: proto, Port: tc.port, FromHost: tc.fromHost}
			ex, err := rs.Explain(p, node)
			if err != nil {
				t.Fatal(err)
			}
			if got := explanationSummary(ex); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// explanationSummary renders an Explanation on one line.
func explanationSummary(ex Explanation) string {
	parts := []string{ex.Verdict, ex.Service}
	if ex.Frontend != "" {
		parts = append(parts, ex.Frontend)
	}
	if ex.ExternalPolicyLocal {
		parts = append(parts, "local")
	}
	if ex.AffinitySeconds > 0 {
		parts = append(parts, "affinity="+strconv.Itoa(ex.AffinitySeconds))
	}
	parts = append(parts, "eps="+strconv.Itoa(len(ex.Endpoints)), "masq="+strconv.FormatBool(ex.Masquerade))
	if ex.Reason != "" {
		parts = append(parts, "reason="+ex.Reason)
	}
	if ex.MasqueradeReason != "" {
		parts = append(parts, "why="+ex.MasqueradeReason)
	}
	return strings.Join(parts, " ")
}

// TestLocalTraffic reads the detector back from the rules.
func TestLocalTraffic(t *testing.T) {
	for name, want := range map[string]LocalTraffic{
		"ipv4":           {SourceCIDR: testPodCIDR},
		"bridge":         {Interface: "cbr0"},
		"prefix":         {Interface: "veth", InterfacePrefix: true},
		"masquerade-all": {MasqueradeAll: true},
	} {
		t.Run(name, func(t *testing.T) {
			env := newTestEnv(t, readbackConfigs()[name])
			env.add(makeService("a", "172.30.0.1", withNodePort(30001), withETPLocal), makeSlice("a", ep{ip: "10.0.1.1"}))
			env.sync(true)
			if got := rulesetOfFake(env.fake).LocalTraffic(v1.IPv4Protocol); got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

// teeConn applies every transaction to the kernel and then to a Fake.
type teeConn struct {
	kernel Conn
	fake   *Fake
}

func (c teeConn) Apply(tx *Transaction) error {
	if err := c.kernel.Apply(tx); err != nil {
		return err
	}
	return c.fake.Apply(tx)
}

// readBack reads a namespace's tables, failing the test on error.
func readBack(t *testing.T, ns *testNetns) *Ruleset {
	t.Helper()
	rs, err := ReadKernel(ns.fd())
	if err != nil {
		t.Fatalf("ReadKernel: %v", err)
	}
	return rs
}

// checkSameDump compares the read-back state with the Fake the Proxier wrote.
func checkSameDump(t *testing.T, rs *Ruleset, fake *Fake) {
	t.Helper()
	got, want := rs.fake.Dump(), fake.Dump()
	if got != want {
		t.Errorf("read-back state differs from what the Proxier wrote:%s", diffLines(strings.Split(got, "\n"), strings.Split(want, "\n")))
	}
	for fam, chains := range rs.unrecognised {
		if len(chains) > 0 {
			t.Errorf("%s: unrecognised chains %v", fam.kw, chains)
		}
	}
}

// TestReadKernelRoundTrip programs the packet-flow World into a namespace with the real
// Proxier, reads it back, and checks that the read-back state is the state the Proxier wrote
// and that every Case traces the same over both.
func TestReadKernelRoundTrip(t *testing.T) {
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		t.Run(string(family), func(t *testing.T) {
			ns := newTestNetns(t)
			cfg := proxiertest.NewConfig(family)
			fake := NewFake()
			p, err := NewWithConn(worldConfig(cfg, ns.fd()), teeConn{kernel: NewNetlinkConn(ns.fd()), fake: fake})
			if err != nil {
				t.Fatal(err)
			}
			syncWorld(t, cfg, p)
			rs := readBack(t, ns)
			if got := rs.Families(); len(got) != 1 || got[0] != family {
				t.Errorf("Families() = %v, want [%s]", got, family)
			}
			checkSameDump(t, rs, fake)
			node := TraceNode{LocalAddrs: []netip.Addr{cfg.NodeIP, proxiertest.NodeProbeIP(family)}}
			cases := proxiertest.Cases(family)
			for _, c := range cases {
				c.Dst = proxiertest.DestinationAddr(cfg, c)
				want := traceCase2Traced(t, fake, cfg, node, c)
				got := traceCase2Traced(t, rs.fake, cfg, node, c)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s: traced over the read-back state %+v, over the Proxier's Fake %+v", c.Name, got, want)
				}
			}
			if len(cases) < 20 {
				t.Errorf("only %d cases", len(cases))
			}
		})
	}
}

// TestReadKernelAfterIncrementalSync reads back a state reached by a partial sync (element
// deletions, chain changes, new affinity timeouts, changed source ranges).
func TestReadKernelAfterIncrementalSync(t *testing.T) {
	env, ns := newTeeEnv(t, testConfig())
	addWorld(env)
	env.sync(true)
	checkSameDump(t, readBack(t, ns), env.fake)
	applyChanges(env)
	env.sync(false)
	checkSameDump(t, readBack(t, ns), env.fake)
}

// newTeeEnv returns a test environment whose Proxier programs a fresh namespace and env.fake.
func newTeeEnv(t *testing.T, cfg Config) (*testEnv, *testNetns) {
	t.Helper()
	ns := newTestNetns(t)
	cfg.NetNSFd = ns.fd()
	env := newTestEnv(t, cfg)
	p, err := NewWithConn(cfg, teeConn{kernel: NewNetlinkConn(ns.fd()), fake: env.fake})
	if err != nil {
		t.Fatal(err)
	}
	env.p = p
	return env, ns
}

// TestReadKernelForeignRule: a rule added by hand is not guessed at; traces through its chain
// fail naming it, other traces work.
func TestReadKernelForeignRule(t *testing.T) {
	env, ns := newTeeEnv(t, testConfig())
	addWorld(env)
	env.sync(true)
	ns.nft(t, "insert", "rule", "ip", TableName, "dnat-vip-2", "tcp", "dport", "22", "counter")
	rs := readBack(t, ns)
	p := Packet{Src: testLocalPod, Dst: mustAddr("172.30.0.1"), Protocol: v1.ProtocolTCP, Port: 80}
	_, err := rs.Explain(p, testNodeTrace)
	var ue *UnrecognisedRuleError
	if !errors.As(err, &ue) || ue.Chain != "dnat-vip-2" {
		t.Errorf("through dnat-vip-2: got %v, want an unrecognised rule in dnat-vip-2", err)
	}
	p.Dst, p.Protocol = mustAddr("172.30.0.9"), v1.ProtocolUDP
	if ex, err := rs.Explain(p, testNodeTrace); err != nil || summary(ex.TraceResult) != "accept 10.0.2.1:8080" {
		t.Errorf("elsewhere: got %q, %v", summary(ex.TraceResult), err)
	}
}

// TestReadKernelNoTable: a namespace without our tables is ErrNoTable.
func TestReadKernelNoTable(t *testing.T) {
	ns := newTestNetns(t)
	ns.nftScript(t, "add table ip other\n")
	if _, err := ReadKernel(ns.fd()); !errors.Is(err, ErrNoTable) {
		t.Errorf("got %v, want ErrNoTable", err)
	}
}

// TestCheckSetType: a set of ours with another shape is refused.
func TestCheckSetType(t *testing.T) {
	spec := familyIPv4.setIndex[kindVIP.endpointsMap()]
	good := &gnft.Set{IsMap: true, KeyType: gnft.SetDatatype{Bytes: uint32(keyLen(spec.key))}, DataType: gnft.SetDatatype{Bytes: uint32(keyLen(spec.data))}}
	if err := checkSetType(spec, good); err != nil {
		t.Errorf("our shape: %v", err)
	}
	for name, s := range map[string]gnft.Set{
		"not a map":   {KeyType: good.KeyType},
		"interval":    {IsMap: true, Interval: true, KeyType: good.KeyType, DataType: good.DataType},
		"short key":   {IsMap: true, KeyType: gnft.SetDatatype{Bytes: 8}, DataType: good.DataType},
		"short value": {IsMap: true, KeyType: good.KeyType, DataType: gnft.SetDatatype{Bytes: 4}},
	} {
		if err := checkSetType(spec, &s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestReadKernelAffinityRecords: live ClientIP affinity records are read back, so a recorded
// client is traced to its endpoint only.
func TestReadKernelAffinityRecords(t *testing.T) {
	env, ns := newTeeEnv(t, testConfig())
	addWorld(env)
	env.sync(true)
	p := Packet{Src: testLocalPod, Dst: mustAddr("172.30.0.7"), Protocol: v1.ProtocolTCP, Port: 80}
	if res, err := readBack(t, ns).Trace(p, testNodeTrace); err != nil || summary(res) != "accept 10.0.2.1:8080 10.0.2.2:8080 sticky" {
		t.Fatalf("without a record: got %q, %v", summary(res), err)
	}
	slot1 := env.fake.Elements(v1.IPv4Protocol, kindVIP.endpointsMap())
	want := ""
	for _, e := range slot1 {
		if strings.HasPrefix(e, "172.30.0.7 . tcp . 80 . 1 : ") {
			want = strings.ReplaceAll(strings.TrimPrefix(e, "172.30.0.7 . tcp . 80 . 1 : "), " . ", ":")
		}
	}
	ns.nft(t, "add", "element", "ip", TableName, kindVIP.affinitySet(), "{ 10.0.1.99 . 172.30.0.7 . tcp . 80 . 0x00000001 timeout 1h }")
	res, err := readBack(t, ns).Trace(p, testNodeTrace)
	if err != nil || want == "" || summary(res) != "accept "+want+" sticky" {
		t.Errorf("with a record for slot 1 (%q): got %q, %v", want, summary(res), err)
	}
}
