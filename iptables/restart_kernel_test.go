package iptables

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// everyShape adds Services whose chains use every rule shape the builder writes: NodePort,
// LoadBalancer with source ranges, external IPs, externalTrafficPolicy Local with a local
// endpoint (hairpin), ClientIP affinity, internalTrafficPolicy Local, no endpoints, IPv6.
func everyShape(w *world) {
	local := v1.ServiceInternalTrafficPolicyLocal
	w.addService(svc("ns", "np", "172.30.0.1", func(s *v1.Service) {
		s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, 30001
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	}))
	w.addSlice(slice("ns", "np", "10.1.0.1", "10.1.0.3", "10.1.0.4"))
	w.addService(svc("ns", "lb", "172.30.0.2", func(s *v1.Service) {
		s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeLoadBalancer, 30002
		s.Spec.ExternalTrafficPolicy, s.Spec.HealthCheckNodePort = v1.ServiceExternalTrafficPolicyLocal, 32000
		s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.7"}}
	}))
	w.addSlice(slice("ns", "lb", "local:10.1.0.2", "10.1.0.5"))
	w.addService(svc("ns", "ext", "172.30.0.3", func(s *v1.Service) {
		s.Spec.ExternalIPs = []string{"198.51.100.8"}
		s.Spec.InternalTrafficPolicy = &local
	}))
	w.addSlice(slice("ns", "ext", "local:10.1.0.6", "10.1.0.7"))
	w.addService(svc("ns", "none", "172.30.0.4", func(s *v1.Service) {
		s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, 30004
	}))
	w.addService(svc("ns", "six", "fd00:30::5", func(s *v1.Service) {
		s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, 30005
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	}))
	w.addSlice(slice("ns", "six", "fd00:10::1", "local:fd00:10::2"))
}

// TestKernelFullSyncOverOwnRulesWritesNothing: a new proxier's first (full) sync over the
// rules an earlier one left for the same state rewrites no chain (iptables-save's spelling of
// every rule shape matches the builder's), and after a chain drifted it rewrites that chain
// alone, restoring traffic-relevant rules exactly.
func TestKernelFullSyncOverOwnRulesWritesNothing(t *testing.T) {
	needRoot(t)
	for _, variant := range variants {
		t.Run(variant, func(t *testing.T) {
			ns := newTestNetNS(t)
			cfg := Config{Families: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, NetNS: ns, Variant: variant,
				MasqueradeBit: 14, Detectors: podCIDR4, LocalhostNodePorts: true,
				NodeIPs: []netip.Addr{netip.MustParseAddr("203.0.113.9")}}
			first := kernelWorldConfig(t, cfg)
			everyShape(first)
			first.mustSync(true)
			natRules := func() string { // both families' nat tables without the dated comment lines
				var out []string
				for _, l := range lines(save(t, ns, variant, v1.IPv4Protocol, "nat") + save(t, ns, variant, v1.IPv6Protocol, "nat")) {
					if !strings.HasPrefix(l, "#") {
						out = append(out, l)
					}
				}
				return strings.Join(out, "\n")
			}
			before := natRules()

			cfg.Metrics = metrics.New(metrics.ModeIPTables)
			second := kernelWorldConfig(t, cfg)
			everyShape(second)
			second.mustSync(true)
			for _, family := range []string{"IPv4", "IPv6"} {
				for _, table := range []string{"nat", "filter"} {
					if got := testutil.ToFloat64(cfg.Metrics.IPTablesRulesLastSync.WithLabelValues(table, family)); got != 0 {
						t.Errorf("%s %s: the full sync over identical rules wrote %v rules, want 0", family, table, got)
					}
				}
			}
			after := natRules()
			if before != after {
				t.Errorf("the tables changed:\n%s", diffLines(lines(before), lines(after)))
			}

			// One service chain drifts: the next full sync writes that chain and nothing else.
			np := chainsFor("ns/np:p80", "tcp").cluster
			restoreInNS(t, ns, variant, "*nat\n:"+np+" - [0:0]\nCOMMIT\n")
			second.mustSync(true)
			if got := testutil.ToFloat64(cfg.Metrics.IPTablesRulesLastSync.WithLabelValues("nat", "IPv4")); got != 7 {
				t.Errorf("after %s was flushed, the full sync wrote %v nat rules, want its 7", np, got)
			}
			if got := natRules(); !strings.Contains(got, "-A "+np+" ") || got != before {
				t.Errorf("%s was not restored as it was:\n%s", np, diffLines(lines(before), lines(got)))
			}
		})
	}
}
