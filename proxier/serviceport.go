package proxier

import (
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/endpoints"
)

// LabelServiceProxyName marks a Service as handled by another proxy: such Services are ignored.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// ServicePort is an immutable, per-IP-family snapshot of one port of one Service: everything a
// backend needs to program its rules. Build it with ServicePortsOf, never by hand outside tests.
type ServicePort struct {
	// Name identifies the port.
	Name endpoints.ServicePortName
	// ClusterIP is the Service's cluster IP of this family.
	ClusterIP netip.Addr
	// Port is the service port number.
	Port int32
	// Protocol is TCP, UDP or SCTP.
	Protocol v1.Protocol
	// NodePort is the node port (0 when none).
	NodePort int32
	// ExternalIPs are spec.externalIPs of this family.
	ExternalIPs []netip.Addr
	// LoadBalancerVIPs are status.loadBalancer.ingress IPs of this family with ipMode VIP (or unset).
	LoadBalancerVIPs []netip.Addr
	// LoadBalancerSourceRanges are the source CIDRs of this family allowed to reach the LB VIPs;
	// empty means everyone (a /0 entry is folded into that too).
	LoadBalancerSourceRanges []netip.Prefix
	// ClientIPAffinity is sessionAffinity: ClientIP.
	ClientIPAffinity bool
	// StickyMaxAgeSeconds is the ClientIP affinity timeout.
	StickyMaxAgeSeconds int32
	// HealthCheckNodePort is spec.healthCheckNodePort for LoadBalancer Services with
	// externalTrafficPolicy Local (0 otherwise).
	HealthCheckNodePort int32
	// ExternalPolicyLocal is externalTrafficPolicy: Local on an externally accessible Service.
	ExternalPolicyLocal bool
	// InternalPolicyLocal is internalTrafficPolicy: Local.
	InternalPolicyLocal bool
}

// ExternallyAccessible reports whether the port can be reached from outside the cluster network.
func (p *ServicePort) ExternallyAccessible() bool {
	return p.NodePort != 0 || len(p.LoadBalancerVIPs) > 0 || len(p.ExternalIPs) > 0
}

// Policy returns what endpoint choice needs to know about the port.
func (p *ServicePort) Policy() endpoints.Policy {
	return endpoints.Policy{
		ExternallyAccessible: p.ExternallyAccessible(),
		InternalLocal:        p.InternalPolicyLocal,
		ExternalLocal:        p.ExternalPolicyLocal,
	}
}

// ShouldSkipService reports whether a Service produces no rules at all: headless, ExternalName,
// without a cluster IP, or claimed by another proxy through the service-proxy-name label.
func ShouldSkipService(svc *v1.Service) bool {
	if svc == nil {
		return true
	}
	if _, ok := svc.Labels[LabelServiceProxyName]; ok {
		return true
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return true
	}
	ip := svc.Spec.ClusterIP
	return ip == "" || ip == v1.ClusterIPNone
}

// ServicePortsOf returns the ports of svc for one IP family, keyed by name. It returns nil when
// the Service is skipped or has no cluster IP of that family. Malformed fields (an unparsable IP,
// an unknown protocol, a bad CIDR) are skipped with a log line, never a failure.
func ServicePortsOf(svc *v1.Service, family v1.IPFamily) map[endpoints.ServicePortName]*ServicePort {
	list := servicePortList(svc, family)
	if list == nil {
		return nil
	}
	ports := make(map[endpoints.ServicePortName]*ServicePort, len(list))
	for _, p := range list {
		ports[p.Name] = p
	}
	return ports
}

// servicePortList is ServicePortsOf as a list sorted by name; of two ports with one name (which
// API validation forbids) the later one counts.
func servicePortList(svc *v1.Service, family v1.IPFamily) []*ServicePort {
	if ShouldSkipService(svc) {
		return nil
	}
	clusterIP, ok := clusterIPOf(svc, family)
	if !ok {
		return nil
	}
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	shared := sharedFields(svc, family)
	ports := make([]*ServicePort, 0, len(svc.Spec.Ports))
	for i := range svc.Spec.Ports {
		sp := &svc.Spec.Ports[i]
		if !KnownProtocol(sp.Protocol) || sp.Port <= 0 || sp.Port > 65535 {
			klog.InfoS("Skipping service port with unsupported protocol or port", "service", nn, "port", sp.Name, "protocol", sp.Protocol, "number", sp.Port)
			continue
		}
		p := shared
		p.Name = endpoints.ServicePortName{NamespacedName: nn, Port: sp.Name, Protocol: sp.Protocol}
		p.ClusterIP = clusterIP
		p.Port = sp.Port
		p.Protocol = sp.Protocol
		p.NodePort = sp.NodePort
		if !p.ExternallyAccessible() {
			p.ExternalPolicyLocal = false
			p.HealthCheckNodePort = 0
		}
		ports = append(ports, &p)
	}
	return sortedUnique(ports)
}

// sortedUnique sorts ports by name, keeping the last of ports sharing a name.
func sortedUnique(ports []*ServicePort) []*ServicePort {
	slices.SortStableFunc(ports, func(a, b *ServicePort) int { return endpoints.CompareNames(a.Name, b.Name) })
	out := ports[:0]
	for i, p := range ports {
		if i+1 < len(ports) && ports[i+1].Name == p.Name {
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil
	}
	return slices.Clip(out)
}

// KnownProtocol reports whether the proxy programs rules for the protocol.
func KnownProtocol(p v1.Protocol) bool {
	return p == v1.ProtocolTCP || p == v1.ProtocolUDP || p == v1.ProtocolSCTP
}

// sharedFields fills the fields common to every port of svc.
func sharedFields(svc *v1.Service, family v1.IPFamily) ServicePort {
	var p ServicePort
	p.ExternalIPs = addrsOfFamily(svc, "externalIPs", svc.Spec.ExternalIPs, family)
	var lbIPs []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode == v1.LoadBalancerIPModeVIP) {
			lbIPs = append(lbIPs, ing.IP)
		}
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		p.LoadBalancerVIPs = addrsOfFamily(svc, "loadBalancer ingress", lbIPs, family)
		p.LoadBalancerSourceRanges = sourceRanges(svc, family)
	}
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		p.ClientIPAffinity = true
		p.StickyMaxAgeSeconds = v1.DefaultClientIPServiceAffinitySeconds
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			p.StickyMaxAgeSeconds = *c.ClientIP.TimeoutSeconds
		}
	}
	p.ExternalPolicyLocal = svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	p.InternalPolicyLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && p.ExternalPolicyLocal {
		p.HealthCheckNodePort = svc.Spec.HealthCheckNodePort
	}
	return p
}

// clusterIPOf returns the Service's cluster IP of the given family.
func clusterIPOf(svc *v1.Service, family v1.IPFamily) (netip.Addr, bool) {
	candidates := svc.Spec.ClusterIPs
	if len(candidates) == 0 {
		candidates = []string{svc.Spec.ClusterIP}
	}
	for _, s := range candidates {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			continue
		}
		if FamilyOf(ip) == family {
			return ip.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// FamilyOf returns the IP family of an address.
func FamilyOf(ip netip.Addr) v1.IPFamily {
	if ip.Is4() || ip.Is4In6() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// addrsOfFamily parses IPs, keeps those of family, and logs the unparsable ones.
func addrsOfFamily(svc *v1.Service, field string, ips []string, family v1.IPFamily) []netip.Addr {
	var out []netip.Addr
	for _, s := range ips {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			klog.InfoS("Skipping invalid IP in service", "service", klog.KObj(svc), "field", field, "ip", s)
			continue
		}
		if FamilyOf(ip) == family {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// sourceRanges parses loadBalancerSourceRanges of one family; any /0 means "allow all" (nil).
func sourceRanges(svc *v1.Service, family v1.IPFamily) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			klog.InfoS("Skipping invalid loadBalancerSourceRange", "service", klog.KObj(svc), "range", s)
			continue
		}
		if FamilyOf(pfx.Addr()) != family {
			continue
		}
		if pfx.Bits() == 0 {
			return nil
		}
		out = append(out, pfx.Masked())
	}
	return out
}
