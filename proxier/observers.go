package proxier

import (
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// MetricsObserver keeps upstream kube-proxy's common sync metrics. Its state (the no-local-
// endpoints sets) is updated from each checkout, so a sync costs O(changes) here too.
type MetricsObserver struct {
	m *metrics.Metrics
	// noLocal holds, per family and traffic policy, the ports whose Local policy has no local
	// endpoints.
	noLocal map[v1.IPFamily]map[string]map[endpoints.ServicePortName]struct{}
}

// NewMetricsObserver returns an observer recording into m.
func NewMetricsObserver(m *metrics.Metrics) *MetricsObserver {
	return &MetricsObserver{m: m, noLocal: map[v1.IPFamily]map[string]map[endpoints.ServicePortName]struct{}{}}
}

// Event implements SyncObserver.
func (o *MetricsObserver) Event(family v1.IPFamily, kind string, pendingServices, pendingEndpoints int) {
	if kind == "service" {
		o.m.ServiceChangesTotal.Inc()
	} else {
		o.m.EndpointChangesTotal.Inc()
	}
	o.m.ServiceChangesPending.Set(float64(pendingServices))
	o.m.EndpointChangesPending.Set(float64(pendingEndpoints))
	o.m.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(string(family)).SetToCurrentTime()
}

// Synced implements SyncObserver.
func (o *MetricsObserver) Synced(req *SyncRequest, took time.Duration, err error) {
	o.m.ServiceChangesPending.Set(0)
	o.m.EndpointChangesPending.Set(0)
	for _, c := range req.Checkouts {
		fam := string(c.Family)
		o.m.SyncProxyRulesLatency.WithLabelValues(fam).Observe(took.Seconds())
		if req.Full {
			o.m.SyncFullProxyRulesLatency.WithLabelValues(fam).Observe(took.Seconds())
		} else {
			o.m.SyncPartialProxyRulesLatency.WithLabelValues(fam).Observe(took.Seconds())
		}
		if err != nil {
			continue
		}
		o.m.SyncProxyRulesLastTimestamp.WithLabelValues(fam).SetToCurrentTime()
		if !c.OldestTrigger.IsZero() {
			o.m.NetworkProgrammingLatency.WithLabelValues(fam).Observe(time.Since(c.OldestTrigger).Seconds())
		}
		o.updateNoLocal(c)
	}
}

// updateNoLocal maintains kubeproxy_sync_proxy_rules_no_local_endpoints_total from the changes.
func (o *MetricsObserver) updateNoLocal(c *Checkout) {
	byPolicy := o.noLocal[c.Family]
	if byPolicy == nil {
		byPolicy = map[string]map[endpoints.ServicePortName]struct{}{"internal": {}, "external": {}}
		o.noLocal[c.Family] = byPolicy
	}
	for _, ch := range c.Changes {
		internal, external := false, false
		if p := ch.Current; p != nil {
			choice := endpoints.Choose(ch.Endpoints, p.Policy(), endpoints.Node{})
			noLocal := choice.HasAny && len(choice.Local) == 0
			internal = p.InternalPolicyLocal && noLocal
			external = p.ExternalPolicyLocal && noLocal
		}
		setMember(byPolicy["internal"], ch.Name, internal)
		setMember(byPolicy["external"], ch.Name, external)
	}
	for policy, set := range byPolicy {
		o.m.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues(policy, string(c.Family)).Set(float64(len(set)))
	}
}

func setMember(set map[endpoints.ServicePortName]struct{}, name endpoints.ServicePortName, in bool) {
	if in {
		set[name] = struct{}{}
	} else {
		delete(set, name)
	}
}

// ServiceHealth is the per-Service health-check node port server
// (proxier/healthcheck.ServiceHealthServer).
type ServiceHealth interface {
	SyncServices(ports map[types.NamespacedName]uint16) error
	SyncEndpoints(counts map[types.NamespacedName]int)
}

// ServiceHealthObserver keeps the health-check node port servers in step with the Services
// (LoadBalancer with externalTrafficPolicy Local) and their local ready endpoint counts.
type ServiceHealthObserver struct {
	server ServiceHealth
	// ports and localReady are per family and service port, merged per Service on change.
	ports      map[familyPort]uint16
	localReady map[familyPort][]netip.Addr
}

// familyPort keys per-family state of a service port.
type familyPort struct {
	family v1.IPFamily
	name   endpoints.ServicePortName
}

// NewServiceHealthObserver returns an observer driving server.
func NewServiceHealthObserver(server ServiceHealth) *ServiceHealthObserver {
	return &ServiceHealthObserver{server: server, ports: map[familyPort]uint16{}, localReady: map[familyPort][]netip.Addr{}}
}

// Event implements SyncObserver.
func (o *ServiceHealthObserver) Event(v1.IPFamily, string, int, int) {}

// Synced implements SyncObserver: after a successful sync with a relevant change, it hands the
// servers the whole (small) map of health-check ports and counts.
func (o *ServiceHealthObserver) Synced(req *SyncRequest, _ time.Duration, err error) {
	if err != nil {
		return
	}
	changed := false
	for _, c := range req.Checkouts {
		for _, ch := range c.Changes {
			changed = o.apply(familyPort{c.Family, ch.Name}, ch) || changed
		}
	}
	if !changed {
		return
	}
	ports := map[types.NamespacedName]uint16{}
	for name, p := range o.ports {
		ports[name.name.NamespacedName] = p
	}
	counts := map[types.NamespacedName]int{}
	ips := map[types.NamespacedName]map[netip.Addr]struct{}{}
	for name, addrs := range o.localReady {
		nn := name.name.NamespacedName
		if ips[nn] == nil {
			ips[nn] = map[netip.Addr]struct{}{}
		}
		for _, a := range addrs {
			ips[nn][a] = struct{}{}
		}
	}
	for nn, set := range ips {
		counts[nn] = len(set)
	}
	if err := o.server.SyncServices(ports); err != nil {
		klog.ErrorS(err, "Failed to open some health-check node ports")
	}
	o.server.SyncEndpoints(counts)
}

// apply records one change and reports whether it touched a health-checked Service.
func (o *ServiceHealthObserver) apply(key familyPort, ch ServicePortChange) bool {
	_, had := o.ports[key]
	if ch.Current == nil || ch.Current.HealthCheckNodePort == 0 {
		delete(o.ports, key)
		delete(o.localReady, key)
		return had
	}
	o.ports[key] = uint16(ch.Current.HealthCheckNodePort)
	var ready []netip.Addr
	for _, ep := range ch.Endpoints {
		if ep.Local && ep.Ready {
			ready = append(ready, ep.IP)
		}
	}
	o.localReady[key] = ready
	return true
}
