package proxiertest

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/nodeproxy/nodeproxy/proxier"
)

var families = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}

// TestCasesAreConsistentWithWorld checks the case table against the World: unique names,
// known Services, endpoints that exist in the Service's slice at the targeted port's target
// port, destinations of the right family, and enough cases.
func TestCasesAreConsistentWithWorld(t *testing.T) {
	total := 0
	for _, family := range families {
		t.Run(string(family), func(t *testing.T) {
			cfg := NewConfig(family)
			w := World(family)
			cases := Cases(family)
			total += len(cases)
			if len(cases) < 25 {
				t.Errorf("%d cases, want at least 25", len(cases))
			}
			names := map[string]bool{}
			for _, c := range cases {
				if names[c.Name] {
					t.Errorf("duplicate case name %q", c.Name)
				}
				names[c.Name] = true
				checkCase(t, cfg, w, c)
			}
		})
	}
	if total < 40 {
		t.Errorf("%d cases over both families, want at least 40", total)
	}
}

// checkCase checks one Case against the World.
func checkCase(t *testing.T, cfg Config, w *WorldState, c Case) {
	t.Helper()
	svc := findService(w, c.Service)
	if svc == nil {
		t.Errorf("%s: Service %q is not in the World", c.Name, c.Service)
		return
	}
	if dst := DestinationAddr(cfg, c); proxier.FamilyOf(dst) != cfg.Family {
		t.Errorf("%s: destination %s is not %s", c.Name, dst, cfg.Family)
	}
	if src := SourceAddr(cfg, c); !src.IsValid() || proxier.FamilyOf(src) != cfg.Family {
		t.Errorf("%s: no %s source address for %s", c.Name, cfg.Family, c.From)
	}
	switch c.Want.Verdict {
	case Reach:
		if len(c.Want.Endpoints) == 0 {
			t.Errorf("%s: Reach without endpoints", c.Name)
		}
		served := sliceEndpoints(w, svc.Name)
		for _, e := range c.Want.Endpoints {
			if !served[e] {
				t.Errorf("%s: endpoint %s is not an endpoint of %s (have %v)", c.Name, e, c.Service, served)
			}
		}
	case Drop, Reject:
		if len(c.Want.Endpoints) > 0 || c.Want.Masquerade || c.Want.Sticky {
			t.Errorf("%s: %s with endpoint expectations", c.Name, c.Want.Verdict)
		}
	default:
		t.Errorf("%s: unknown verdict %q", c.Name, c.Want.Verdict)
	}
}

// findService returns the World's Service "ns/name".
func findService(w *WorldState, key string) *v1.Service {
	for _, svc := range w.Services {
		if svc.Namespace+"/"+svc.Name == key {
			return svc
		}
	}
	return nil
}

// sliceEndpoints returns every "ip:port" the Service's slices publish.
func sliceEndpoints(w *WorldState, svcName string) map[string]bool {
	out := map[string]bool{}
	for _, s := range w.Slices {
		if s.Labels[discovery.LabelServiceName] != svcName {
			continue
		}
		for _, e := range s.Endpoints {
			for _, p := range s.Ports {
				ip := netip.MustParseAddr(e.Addresses[0])
				out[netip.AddrPortFrom(ip, uint16(*p.Port)).String()] = true
			}
		}
	}
	return out
}

// TestWorldObjects checks the World's objects: family, slices and pod placement.
func TestWorldObjects(t *testing.T) {
	for _, family := range families {
		t.Run(string(family), func(t *testing.T) {
			cfg := NewConfig(family)
			w := World(family)
			if len(w.Services) < 20 {
				t.Errorf("%d Services, want one per feature (at least 20)", len(w.Services))
			}
			for _, svc := range w.Services {
				if svc.Spec.Type == v1.ServiceTypeExternalName || svc.Spec.ClusterIP == v1.ClusterIPNone {
					continue
				}
				ip := netip.MustParseAddr(svc.Spec.ClusterIP)
				if !cfg.ServiceCIDR.Contains(ip) || !slices.Equal(svc.Spec.IPFamilies, []v1.IPFamily{family}) {
					t.Errorf("Service %s: ClusterIP %s / families %v do not fit %s", svc.Name, ip, svc.Spec.IPFamilies, family)
				}
			}
			checkSlices(t, w, family)
			if w.Node.Labels[v1.LabelTopologyZone] != NodeAZone || w.Node.Spec.PodCIDR != cfg.PodCIDR.String() {
				t.Errorf("node-a object lacks its zone or podCIDR: %+v", w.Node)
			}
		})
	}
}

// checkSlices checks that every endpoint lives in its node's pod range and that slices are
// of the family.
func checkSlices(t *testing.T, w *WorldState, family v1.IPFamily) {
	t.Helper()
	p := planFor(family)
	for _, s := range w.Slices {
		if string(s.AddressType) != string(family) {
			t.Errorf("slice %s has address type %s", s.Name, s.AddressType)
		}
		for _, e := range s.Endpoints {
			ip := netip.MustParseAddr(e.Addresses[0])
			if e.NodeName == nil || !p.podCIDR(*e.NodeName).Contains(ip) {
				t.Errorf("slice %s: endpoint %s is not in its node's pod range", s.Name, ip)
			}
		}
	}
}

// TestNewConfig checks the Config against the address plan.
func TestNewConfig(t *testing.T) {
	for _, tc := range []struct {
		family             v1.IPFamily
		nodeIP, nodePortTo string
	}{
		{v1.IPv4Protocol, "192.0.2.11", "192.0.2.11/32"},
		{v1.IPv6Protocol, "2001:db8::11", "2001:db8::11/128"},
	} {
		cfg := NewConfig(tc.family)
		if cfg.NodeIP.String() != tc.nodeIP || len(cfg.NodePortAddresses) != 1 || cfg.NodePortAddresses[0].String() != tc.nodePortTo {
			t.Errorf("%s: NodeIP %s, NodePortAddresses %v", tc.family, cfg.NodeIP, cfg.NodePortAddresses)
		}
		if cfg.MasqueradeBit != 14 || cfg.NodeName != "node-a" || !cfg.ClusterCIDR.Contains(cfg.PodCIDR.Addr()) {
			t.Errorf("%s: unexpected Config %+v", tc.family, cfg)
		}
	}
	if got := LocalPodIP(v1.IPv6Protocol).String(); got != "fd00:10:244:1::c8" {
		t.Errorf("IPv6 client pod %s, want fd00:10:244:1::c8", got)
	}
}
