package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// This file puts a trace over a read-back ruleset into words: which Service port the
// destination belongs to, why the packet is dropped or rejected, why it is (not) masqueraded.
// The verdict, endpoints and masquerading come from the tracer; this only names the elements
// and rules behind them, looked up the way the rules look them up.

// Frontend kinds an Explanation names.
const (
	FrontendClusterIP = "ClusterIP"
	FrontendNodePort  = "NodePort"
	// FrontendExternal is an external IP or a LoadBalancer IP without source ranges (the
	// rules do not tell them apart).
	FrontendExternal     = "external or LoadBalancer IP"
	FrontendLoadBalancer = "LoadBalancer IP"
)

// Explanation is what a new connection meets in nodeproxy's rules, in words.
type Explanation struct {
	// TraceResult is the tracer's result: verdict, candidate endpoints, masquerading.
	TraceResult
	// Service names the service port the destination belongs to: the "ns/name:port" comment
	// of its elements, or "ip:port/proto" ("NodePort port/proto") when they carry none.
	// Empty when the destination is no Service's.
	Service string
	// Frontend is how the destination reaches the Service (FrontendClusterIP, ...).
	Frontend string
	// ExternalPolicyLocal is true for external frontends with externalTrafficPolicy Local.
	ExternalPolicyLocal bool
	// AffinitySeconds is the ClientIP affinity timeout (0: no affinity).
	AffinitySeconds int
	// Reason says why the packet is dropped or rejected, or that no rule is about it.
	Reason string
	// MasqueradeReason says why the packet is or is not masqueraded (reaching packets).
	MasqueradeReason string
}

// LocalTraffic is how the rules tell traffic from local pods apart (the local traffic
// detector, as read back).
type LocalTraffic struct {
	// SourceCIDR: packets from it are local pods' (invalid: not this kind of detector).
	SourceCIDR netip.Prefix
	// Interface: packets arriving on it are local pods' ("": not this kind of detector);
	// InterfacePrefix makes it a name prefix.
	Interface       string
	InterfacePrefix bool
	// MasqueradeAll: all ClusterIP traffic is masqueraded.
	MasqueradeAll bool
}

// LocalTraffic returns how the family's rules recognise local pod traffic (zero when they do
// not, or when there is no such table).
func (rs *Ruleset) LocalTraffic(ipFamily v1.IPFamily) LocalTraffic {
	var lt LocalTraffic
	t := rs.fake.snapshot(ipFamily, TableName)
	if t == nil {
		return lt
	}
	if ru, ok := masqueradeRule(t); ok && len(ru.exprs) == 2 {
		lt.MasqueradeAll = true
	}
	var det ruleExpr
	if ru, ok := masqueradeRule(t); ok && len(ru.exprs) == 3 {
		det = ru.exprs[1] // a negated detector
	}
	if det == nil {
		det = shortCircuitDetector(t)
	}
	switch d := det.(type) {
	case addrMatch:
		lt.SourceCIDR = d.prefix
	case ifnameMatch:
		lt.Interface, lt.InterfacePrefix = d.name, d.prefix
	}
	return lt
}

// masqueradeRule returns the services chain's rule marking ClusterIP traffic for masquerading:
// `@cluster-ips [detector] mark`.
func masqueradeRule(t *fakeTable) (rule, bool) {
	c := t.chains[chainServices]
	if c == nil {
		return rule{}, false
	}
	for _, ru := range c.rules {
		if len(ru.exprs) > 0 {
			if _, ok := ru.exprs[len(ru.exprs)-1].(markOr); ok {
				return ru, true
			}
		}
	}
	return rule{}, false
}

// shortCircuitDetector returns the detector of an external-local chain's pod short-circuit.
func shortCircuitDetector(t *fakeTable) ruleExpr {
	for name, c := range t.chains {
		if strings.HasPrefix(name, "external-local-") && len(c.rules) > 0 && len(c.rules[0].exprs) == 2 {
			switch d := c.rules[0].exprs[0].(type) {
			case addrMatch, ifnameMatch:
				return d
			}
		}
	}
	return nil
}

// Explain traces p (as Trace) and explains the result.
func (rs *Ruleset) Explain(p Packet, node TraceNode) (Explanation, error) {
	res, err := rs.Trace(p, node)
	if err != nil {
		return Explanation{}, err
	}
	fam := familyIPv4
	if !p.Dst.Unmap().Is4() {
		fam = familyIPv6
	}
	x := &explainer{
		tr:  &tracer{fam: fam, t: rs.fake.snapshot(fam.ipFamily, TableName), local: node.LocalAddrs},
		src: p.Src.Unmap(), dst: p.Dst.Unmap(), proto: protoNumber(p.Protocol), port: uint16(p.Port), iif: p.IIFName,
	}
	ex := Explanation{TraceResult: res}
	x.frontend(&ex)
	switch {
	case res.Verdict == TraceAccept && len(res.Endpoints) > 0:
		ex.MasqueradeReason = x.masqueradeReason(&ex)
	case res.Verdict == TraceAccept:
		ex.Reason = "not a Service address: no nodeproxy rule matches" + x.nodePortHint()
	default:
		ex.Reason = x.refusal(&ex)
	}
	return ex, nil
}

// explainer looks up what the rules look up for one packet.
type explainer struct {
	tr    *tracer
	src   netip.Addr
	dst   netip.Addr
	proto uint8
	port  uint16
	iif   string
	// dispatch is the frontend's element in a dispatch map (zero: none).
	dispatch element
}

func (x *explainer) vipKey() string { return keyBuf{}.addr(x.dst).proto(x.proto).port(x.port).String() }
func (x *explainer) npKey() string  { return keyBuf{}.proto(x.proto).port(x.port).String() }

// frontend finds the Service port of the destination: a VIP first, then a NodePort (the
// order of the services chain), in the dispatch or else the no-endpoint maps.
func (x *explainer) frontend(ex *Explanation) {
	vip, np := x.vipKey(), x.npKey()
	for _, m := range []string{mapServiceIPs, mapNoEndpointServices} {
		if el, ok := x.tr.lookup(m, vip); ok {
			ex.Frontend = FrontendExternal
			if _, ok := x.tr.lookup(setClusterIPs, keyBuf{}.addr(x.dst).String()); ok {
				ex.Frontend = FrontendClusterIP
			} else if _, ok := x.tr.lookup(setFirewallIPs, vip); ok {
				ex.Frontend = FrontendLoadBalancer
			}
			x.name(ex, m, el, netip.AddrPortFrom(x.dst, x.port).String()+"/"+protoName(x.proto))
			return
		}
	}
	if !x.nodePortServed() {
		return
	}
	for _, m := range []string{mapServiceNodePorts, mapNoEndpointNodePorts} {
		if el, ok := x.tr.lookup(m, np); ok {
			ex.Frontend = FrontendNodePort
			x.name(ex, m, el, fmt.Sprintf("NodePort %d/%s", x.port, protoName(x.proto)))
			return
		}
	}
}

// nodePortServed reports whether the destination address answers NodePorts: whether every
// match of a services chain rule leading to the NodePort map holds.
func (x *explainer) nodePortServed() bool {
	c := x.tr.t.chains[chainServices]
	if c == nil {
		return false
	}
	st := traceState{src: x.src, dst: netip.AddrPortFrom(x.dst, x.port), proto: x.proto, iif: x.iif}
	for _, ru := range c.rules {
		last := len(ru.exprs) - 1
		if v, ok := ru.exprs[last].(vmapLookup); !ok || v.set != mapServiceNodePorts {
			continue
		}
		served := true
		for _, e := range ru.exprs[:last] {
			hit, known := x.tr.match(e, st)
			served = served && hit && known
		}
		if served {
			return true
		}
	}
	return false
}

var stickyChainRE = regexp.MustCompile(`sticky-[a-z-]+-([0-9]+)s-[0-9]+$`)

// name records the Service port of the element found in map m (fallback: no comment).
func (x *explainer) name(ex *Explanation, m string, el element, fallback string) {
	ex.Service = el.comment
	if ex.Service == "" {
		ex.Service = fallback
	}
	if m != mapServiceIPs && m != mapServiceNodePorts {
		return
	}
	x.dispatch = el
	ex.ExternalPolicyLocal = strings.HasPrefix(el.verd.chain, "external-local-")
	if sub := stickyChainRE.FindStringSubmatch(el.verd.chain); sub != nil {
		ex.AffinitySeconds, _ = strconv.Atoi(sub[1]) // digits only: cannot fail
	}
}

// nodePortHint explains a NodePort that a local destination address does not serve.
func (x *explainer) nodePortHint() string {
	if !x.tr.isLocal(x.dst) {
		return ""
	}
	for _, m := range []string{mapServiceNodePorts, mapNoEndpointNodePorts} {
		if el, ok := x.tr.lookup(m, x.npKey()); ok {
			owner := ""
			if el.comment != "" {
				owner = " of Service " + el.comment
			}
			return fmt.Sprintf(" (%d/%s is a NodePort%s, but %s is not a NodePort address of this node)", x.port, protoName(x.proto), owner, x.dst)
		}
	}
	return ""
}

// refusal says why the packet is dropped or rejected, checking the rules in hook order:
// LoadBalancer source ranges, frontends without endpoints, ClusterIP ports and service CIDRs.
func (x *explainer) refusal(ex *Explanation) string {
	vip := x.vipKey()
	if fw, ok := x.tr.lookup(setFirewallIPs, vip); ok && ex.Verdict == TraceDrop {
		if _, allowed := x.tr.lookup(setFirewallAllow, vip+keyBuf{}.addr(x.src).String()); !allowed {
			return fmt.Sprintf("source %s is not in the loadBalancerSourceRanges of Service %s", x.src, orElse(fw.comment, ex.Service))
		}
	}
	for _, ne := range []struct{ m, key string }{{mapNoEndpointNodePorts, x.npKey()}, {mapNoEndpointServices, vip}} {
		el, ok := x.tr.lookup(ne.m, ne.key)
		if !ok || (ne.m == mapNoEndpointNodePorts && ex.Frontend != FrontendNodePort) {
			continue
		}
		switch {
		case ex.Verdict == TraceReject && el.verd == goTo(chainReject):
			return fmt.Sprintf("Service %s has no endpoints", ex.Service)
		case ex.Verdict == TraceDrop && el.verd == verdictDropV && ex.Frontend == FrontendClusterIP:
			return "internalTrafficPolicy Local and no local endpoints"
		case ex.Verdict == TraceDrop && el.verd == verdictDropV:
			return "externalTrafficPolicy Local and no local endpoints"
		}
	}
	if _, ok := x.tr.lookup(setClusterIPs, keyBuf{}.addr(x.dst).String()); ok && ex.Verdict == TraceReject {
		return fmt.Sprintf("%s is a ClusterIP, but no Service port %d/%s is defined on it (ports: %s)",
			x.dst, x.port, protoName(x.proto), strings.Join(x.clusterIPPorts(), " "))
	}
	if c := x.tr.t.chains[chainClusterIPsCheck]; c != nil && ex.Verdict == TraceDrop {
		for _, ru := range c.rules {
			if m, ok := ru.exprs[0].(addrMatch); ok && !m.saddr && m.prefix.Contains(x.dst) {
				return fmt.Sprintf("%s is in the service CIDR %s but is not an allocated ClusterIP", x.dst, m.prefix)
			}
		}
	}
	return ex.Verdict + " by a nodeproxy rule"
}

// clusterIPPorts lists the ports and protocols defined on the destination ClusterIP.
func (x *explainer) clusterIPPorts() []string {
	addrLen := x.tr.fam.addr.size()
	var out []string
	for _, m := range []string{mapServiceIPs, mapNoEndpointServices} {
		s := x.tr.t.sets[m]
		if s == nil {
			continue
		}
		for _, el := range s.elems {
			if el.key[:addrLen] == string(x.dst.AsSlice()) {
				proto, port := el.key[addrLen], binary.BigEndian.Uint16([]byte(el.key[addrLen+4:]))
				out = append(out, fmt.Sprintf("%d/%s", port, protoName(proto)))
			}
		}
	}
	slices.Sort(out)
	return out
}

// masqueradeReason says why a reaching packet is (not) masqueraded, from the rule that
// decided: the ClusterIP masquerade rule, or the external chain the dispatch element leads to.
func (x *explainer) masqueradeReason(ex *Explanation) string {
	var why string
	switch target := x.dispatch.verd.chain; {
	case ex.Frontend == FrontendClusterIP:
		why = x.clusterIPMasquerade(ex.Masquerade)
	case strings.HasPrefix(target, "external-local-") && ex.Masquerade:
		why = "traffic from the node itself (externalTrafficPolicy Local)"
	case strings.HasPrefix(target, "external-local-") && x.fromLocalPod():
		why = "source is a local pod: short-circuited to every endpoint, client address kept"
	case strings.HasPrefix(target, "external-local-"):
		why = "externalTrafficPolicy Local keeps the client address"
	case strings.HasPrefix(target, "external-"):
		why = "externalTrafficPolicy Cluster: external traffic is masqueraded"
	}
	if len(ex.Hairpin) > 0 {
		eps := make([]string, len(ex.Hairpin))
		for i, ep := range ex.Hairpin {
			eps[i] = ep.String()
		}
		why = strings.TrimPrefix(why+"; ", "; ") + "hairpin: masqueraded when it lands on itself (" + strings.Join(eps, " ") + ")"
	}
	return why
}

// clusterIPMasquerade explains the services chain's masquerade rule for this packet.
func (x *explainer) clusterIPMasquerade(masq bool) string {
	ru, ok := masqueradeRule(x.tr.t)
	switch {
	case !ok:
		return "no local traffic detector: ClusterIP traffic is not masqueraded"
	case len(ru.exprs) == 2:
		return "masqueradeAll: all ClusterIP traffic is masqueraded"
	}
	not := ""
	if masq {
		not = "not "
	}
	switch d := ru.exprs[1].(type) {
	case addrMatch:
		return fmt.Sprintf("source is %sin the pod CIDR %s", not, d.prefix)
	case ifnameMatch:
		name := d.name
		if d.prefix {
			name += "*"
		}
		return fmt.Sprintf("packet does %sarrive on a pod interface (%s)", not, name)
	}
	return ""
}

// fromLocalPod evaluates the local traffic detector of the rules for this packet.
func (x *explainer) fromLocalPod() bool {
	det := shortCircuitDetector(x.tr.t)
	if det == nil {
		return false
	}
	hit, _ := x.tr.match(det, traceState{src: x.src, iif: x.iif})
	return hit
}

func orElse(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
