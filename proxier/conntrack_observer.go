package proxier

import (
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier/conntrack"
	"github.com/nodeproxy/nodeproxy/proxier/metrics"
)

// ConntrackObserver deletes stale UDP and SCTP conntrack flows after each successful sync, for
// the changed service ports only: flows to a removed frontend, flows DNATed to an endpoint that
// no longer serves, and un-DNATed flows to a frontend that just gained endpoints.
type ConntrackObserver struct {
	cleaner conntrack.Interface
	m       *metrics.Metrics // optional
}

// NewConntrackObserver returns an observer cleaning through cleaner and recording into m (m may
// be nil).
func NewConntrackObserver(cleaner conntrack.Interface, m *metrics.Metrics) *ConntrackObserver {
	return &ConntrackObserver{cleaner: cleaner, m: m}
}

// Event implements SyncObserver.
func (o *ConntrackObserver) Event(v1.IPFamily, string, int, int) {}

// Synced implements SyncObserver.
func (o *ConntrackObserver) Synced(req *SyncRequest, _ time.Duration, err error) {
	if err != nil {
		return
	}
	for _, c := range req.Checkouts {
		targets := ConntrackTargets(c.Changes)
		if len(targets) == 0 {
			continue
		}
		start := time.Now()
		deleted, err := o.cleaner.CleanStale(c.Family, targets)
		if err != nil {
			klog.ErrorS(err, "Failed to delete stale conntrack flows", "ipFamily", c.Family)
		}
		if o.m != nil {
			o.m.ReconcileConntrackFlowsLatency.WithLabelValues(string(c.Family)).Observe(time.Since(start).Seconds())
			o.m.ReconcileConntrackFlowsDeletedEntriesTotal.WithLabelValues(string(c.Family)).Add(float64(deleted))
		}
	}
}

// ConntrackTargets returns the cleanup targets for the UDP and SCTP ports among changes whose
// change can leave a stale flow: a frontend (VIP or port) that went away, an endpoint that
// stopped serving, or a port that had no serving endpoint and now has one.
func ConntrackTargets(changes []ServicePortChange) []conntrack.Target {
	var out []conntrack.Target
	for _, ch := range changes {
		if ch.Name.Protocol != v1.ProtocolUDP && ch.Name.Protocol != v1.ProtocolSCTP {
			continue
		}
		if gone := goneFrontends(ch.Previous, ch.Current); gone != nil {
			// Nothing serves a frontend that went away: all its flows go.
			out = append(out, *gone)
		}
		if ch.Current == nil {
			continue
		}
		serving := servingAddrs(ch.Endpoints)
		prevServing := servingAddrs(ch.PreviousEndpoints)
		lostOne := false
		for ap := range prevServing {
			if _, ok := serving[ap]; !ok {
				lostOne = true
				break
			}
		}
		gainedFirst := len(prevServing) == 0 && len(serving) > 0
		if !lostOne && !gainedFirst {
			continue
		}
		list := make([]netip.AddrPort, 0, len(serving))
		for ap := range serving {
			list = append(list, ap)
		}
		p := ch.Current
		out = append(out, conntrack.Target{Protocol: p.Protocol, VIPs: frontends(p), Port: p.Port, NodePort: p.NodePort, Serving: list})
	}
	return out
}

// goneFrontends returns a target for the frontends of prev that cur no longer has (all of
// them when cur is nil or its port differs), or nil when none went away.
func goneFrontends(prev, cur *ServicePort) *conntrack.Target {
	if prev == nil {
		return nil
	}
	gone := frontends(prev)
	if cur != nil && cur.Port == prev.Port {
		keep := map[netip.Addr]bool{}
		for _, a := range frontends(cur) {
			keep[a] = true
		}
		gone = slices.DeleteFunc(gone, func(a netip.Addr) bool { return keep[a] })
	}
	if len(gone) == 0 {
		return nil
	}
	return &conntrack.Target{Protocol: prev.Protocol, VIPs: gone, Port: prev.Port}
}

// servingAddrs returns the set of serving endpoints.
func servingAddrs(eps []endpoints.Endpoint) map[netip.AddrPort]struct{} {
	set := make(map[netip.AddrPort]struct{}, len(eps))
	for _, ep := range eps {
		if ep.Serving {
			set[ep.AddrPort()] = struct{}{}
		}
	}
	return set
}

// frontends returns every destination address of a service port except node ports.
func frontends(p *ServicePort) []netip.Addr {
	out := []netip.Addr{p.ClusterIP}
	out = append(out, p.ExternalIPs...)
	return append(out, p.LoadBalancerVIPs...)
}
