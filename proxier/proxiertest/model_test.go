package proxiertest

import (
	"net/netip"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// modelTracer is a reference tracer written from upstream's documented semantics over the
// shared ServicePort and endpoint-choice code, not over any ruleset. RunTracer passing with it
// shows that the Cases agree with the endpoints package and proxier.ServicePortsOf.
type modelTracer struct {
	cfg   Config
	node  endpoints.Node
	ports []*proxier.ServicePort
	eps   map[endpoints.ServicePortName][]endpoints.Endpoint
}

func newModelTracer(cfg Config) *modelTracer {
	w := World(cfg.Family)
	m := &modelTracer{
		cfg:  cfg,
		node: endpoints.Node{Name: cfg.NodeName, Zone: w.Node.Labels[endpoints.ZoneLabel]},
		eps:  map[endpoints.ServicePortName][]endpoints.Endpoint{},
	}
	cache := endpoints.NewSliceCache(cfg.Family, cfg.NodeName)
	for _, s := range w.Slices {
		cache.Update(s, false)
	}
	for _, svc := range w.Services {
		for name, p := range proxier.ServicePortsOf(svc, cfg.Family) {
			m.ports = append(m.ports, p)
			m.eps[name] = cache.EndpointsFor(types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name})[name]
		}
	}
	return m
}

// trace follows upstream nftables mode: LB source-range firewall, then ClusterIP, external
// IP / LB IP, NodePort; no endpoints → reject; a policy without usable endpoints → drop.
func (m *modelTracer) trace(c Case) Traced {
	src, dst := SourceAddr(m.cfg, c), c.Dst
	for _, p := range m.ports {
		if p.Protocol == c.Protocol && p.Port == c.Port && slices.Contains(p.LoadBalancerVIPs, dst) &&
			len(p.LoadBalancerSourceRanges) > 0 && !slices.ContainsFunc(p.LoadBalancerSourceRanges, func(r netip.Prefix) bool { return r.Contains(src) }) {
			return Traced{Verdict: Drop}
		}
	}
	for _, p := range m.ports {
		if p.Protocol != c.Protocol {
			continue
		}
		switch {
		case p.ClusterIP == dst && p.Port == c.Port:
			return m.deliver(p, src, false)
		case p.Port == c.Port && (slices.Contains(p.ExternalIPs, dst) || slices.Contains(p.LoadBalancerVIPs, dst)):
			return m.deliver(p, src, true)
		case p.NodePort == c.Port && slices.ContainsFunc(m.cfg.NodePortAddresses, func(r netip.Prefix) bool { return r.Contains(dst) }):
			return m.deliver(p, src, true)
		}
	}
	for _, p := range m.ports {
		if p.ClusterIP == dst {
			return Traced{Verdict: Reject} // an unknown port of an active ClusterIP
		}
	}
	return Traced{Verdict: Drop}
}

// deliver picks the endpoints and masquerading of traffic to port p from src.
func (m *modelTracer) deliver(p *proxier.ServicePort, src netip.Addr, external bool) Traced {
	choice := endpoints.Choose(m.eps[p.Name], p.Policy(), m.node)
	if !choice.HasAny {
		return Traced{Verdict: Reject}
	}
	fromPod, fromNode := m.cfg.ClusterCIDR.Contains(src), src == m.cfg.NodeIP
	var eps []endpoints.Endpoint
	var masq bool
	switch {
	case !external && p.InternalPolicyLocal:
		eps, masq = choice.Local, !fromPod
	case !external:
		eps, masq = choice.Cluster, !fromPod
	case !p.ExternalPolicyLocal:
		eps, masq = choice.Cluster, true
	case fromPod || fromNode: // short-circuit to the cluster endpoints
		eps, masq = choice.Cluster, fromNode
	default:
		eps, masq = choice.Local, false
	}
	if len(eps) == 0 {
		return Traced{Verdict: Drop}
	}
	tr := Traced{Verdict: Reach, Masquerade: masq, Sticky: p.ClientIPAffinity}
	for _, e := range eps {
		tr.Endpoints = append(tr.Endpoints, e.String())
		if e.IP == src {
			tr.Masquerade = true // hairpin
		}
	}
	return tr
}

// TestCasesAgreeWithModel runs RunTracer with the reference model.
func TestCasesAgreeWithModel(t *testing.T) {
	for _, family := range families {
		t.Run(string(family), func(t *testing.T) {
			cfg := NewConfig(family)
			RunTracer(t, cfg, newModelTracer(cfg).trace)
		})
	}
}

// TestCompareTraced checks that RunTracer's comparison catches each kind of mismatch.
func TestCompareTraced(t *testing.T) {
	c := Case{Name: "x", Want: reach(true, "10.244.1.10:8080", "10.244.2.10:8080")}
	ok := Traced{Verdict: Reach, Endpoints: []string{"10.244.2.10:8080", "10.244.1.10:8080"}, Masquerade: true}
	for _, tc := range []struct {
		name   string
		c      Case
		got    Traced
		wantOK bool
	}{
		{"match in any order", c, ok, true},
		{"wrong verdict", c, Traced{Verdict: Drop}, false},
		{"missing endpoint", c, Traced{Verdict: Reach, Endpoints: ok.Endpoints[:1], Masquerade: true}, false},
		{"extra endpoint", c, Traced{Verdict: Reach, Endpoints: append(slices.Clone(ok.Endpoints), "10.244.1.11:8080"), Masquerade: true}, false},
		{"masquerade differs", c, Traced{Verdict: Reach, Endpoints: ok.Endpoints}, false},
		{"sticky differs", c, Traced{Verdict: Reach, Endpoints: ok.Endpoints, Masquerade: true, Sticky: true}, false},
		{"bad endpoint text", c, Traced{Verdict: Reach, Endpoints: []string{"nonsense"}, Masquerade: true}, false},
		{"AnyOne subset", Case{Want: Want{Verdict: Reach, AnyOne: true, Endpoints: c.Want.Endpoints}},
			Traced{Verdict: Reach, Endpoints: ok.Endpoints[:1]}, true},
		{"AnyOne empty", Case{Want: Want{Verdict: Reach, AnyOne: true, Endpoints: c.Want.Endpoints}},
			Traced{Verdict: Reach}, false},
		{"reject ignores the rest", Case{Want: rejected}, Traced{Verdict: Reject, Masquerade: true}, true},
		{"IPv6 spelled differently", Case{Want: reach(false, "[fd00:10:244:1::a]:8080")},
			Traced{Verdict: Reach, Endpoints: []string{"[fd00:10:244:1:0:0:0:a]:8080"}}, true},
	} {
		problems := compareTraced(tc.c, tc.got)
		if (len(problems) == 0) != tc.wantOK {
			t.Errorf("%s: problems %v, want ok=%t", tc.name, problems, tc.wantOK)
		}
	}
}
