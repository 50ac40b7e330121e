package proxiertest

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/endpoints"
	"github.com/nodeproxy/nodeproxy/proxier"
)

// nftSelfTestBackend is a TEST-ONLY backend that exists to prove the kernel harness. It
// rewrites one nft table ("npself") with the nft CLI on every sync, one chain per service port
// and policy, after the shape of upstream's ruleset: DNAT with numgen, ClientIP affinity with
// dynamic sets, masquerade mark, hairpin masquerade, source-range firewall, reject without
// endpoints, drop without local endpoints. It is no product: no partial syncs, no maps, no
// chain-count discipline.
type nftSelfTestBackend struct {
	ns  netns.NsHandle
	cfg Config
}

func newNFTSelfTestBackend(_ *testing.T, ns netns.NsHandle, cfg Config) proxier.Backend {
	return &nftSelfTestBackend{ns: ns, cfg: cfg}
}

// Sync implements proxier.Backend.
func (b *nftSelfTestBackend) Sync(ctx context.Context, req *proxier.SyncRequest) error {
	type portEPs struct {
		port *proxier.ServicePort
		eps  []endpoints.Endpoint
	}
	var ports []portEPs
	req.Trackers[0].ForEach(func(p *proxier.ServicePort, eps []endpoints.Endpoint) {
		ports = append(ports, portEPs{p, eps})
	})
	slices.SortFunc(ports, func(a, b portEPs) int {
		return strings.Compare(a.port.Name.String()+string(a.port.Protocol), b.port.Name.String()+string(b.port.Protocol))
	})
	r := newNFTScript(b.cfg)
	var active []string
	for i, pe := range ports {
		active = append(active, pe.port.ClusterIP.String())
		r.addPort(i, pe.port, endpoints.Choose(pe.eps, pe.port.Policy(), req.Node))
	}
	if slices.Sort(active); len(active) > 0 {
		r.rule("checks", fmt.Sprintf("%s daddr { %s } reject", r.fam, strings.Join(slices.Compact(active), ", ")))
	}
	return runNFT(ctx, b.ns, r.String())
}

// nftScript collects `nft -f` commands: chains and sets first, then rules.
type nftScript struct {
	cfg          Config
	fam, mark    string
	decls, rules []string
}

func newNFTScript(cfg Config) *nftScript {
	r := &nftScript{cfg: cfg, fam: "ip", mark: fmt.Sprintf("%#x", 1<<cfg.MasqueradeBit)}
	if cfg.Family == v1.IPv6Protocol {
		r.fam = "ip6"
	}
	r.decls = append(r.decls, "add table "+r.fam+" npself", "delete table "+r.fam+" npself", "add table "+r.fam+" npself")
	for _, c := range [][3]string{
		{"nat-pre", "nat hook prerouting priority dstnat", "jump services"},
		{"nat-out", "nat hook output priority -100", "jump services"},
		{"nat-post", "nat hook postrouting priority srcnat", "mark and " + r.mark + " != 0 masquerade"},
		{"fw-pre", "filter hook prerouting priority -110", "jump firewall"},
		{"fw-out", "filter hook output priority -110", "jump firewall"},
		{"filter-in", "filter hook input priority filter", "ct state new jump checks"},
		{"filter-fwd", "filter hook forward priority filter", "ct state new jump checks"},
		{"filter-out", "filter hook output priority filter", "ct state new jump checks"},
	} {
		r.chain(c[0], "{ type "+c[1]+"; }")
		r.rule(c[0], c[2])
	}
	for _, c := range []string{"services", "checks", "firewall"} {
		r.chain(c, "")
	}
	r.rule("services", fmt.Sprintf("%s daddr %s %s saddr != %s mark set mark or %s", r.fam, cfg.ServiceCIDR, r.fam, cfg.ClusterCIDR, r.mark))
	return r
}

func (r *nftScript) chain(name, spec string) {
	r.decls = append(r.decls, strings.TrimSpace(fmt.Sprintf("add chain %s npself %s %s", r.fam, name, spec)))
}

func (r *nftScript) rule(chain, rule string) {
	r.rules = append(r.rules, fmt.Sprintf("add rule %s npself %s %s", r.fam, chain, rule))
}

func (r *nftScript) String() string { return strings.Join(append(r.decls, r.rules...), "\n") + "\n" }

// addPort programs service port number i.
func (r *nftScript) addPort(i int, p *proxier.ServicePort, choice endpoints.Choice) {
	l4 := "meta l4proto " + strings.ToLower(string(p.Protocol)) + " th dport"
	cluster := fmt.Sprintf("%s daddr %s %s %d", r.fam, p.ClusterIP, l4, p.Port)
	var external []string
	for _, ip := range append(slices.Clone(p.ExternalIPs), p.LoadBalancerVIPs...) {
		external = append(external, fmt.Sprintf("%s daddr %s %s %d", r.fam, ip, l4, p.Port))
	}
	for _, pfx := range r.cfg.NodePortAddresses {
		if p.NodePort != 0 {
			external = append(external, fmt.Sprintf("%s daddr %s %s %d", r.fam, pfx, l4, p.NodePort))
		}
	}
	if ranges := p.LoadBalancerSourceRanges; len(ranges) > 0 {
		for _, vip := range p.LoadBalancerVIPs {
			r.rule("firewall", fmt.Sprintf("%s daddr %s %s %d %s saddr != { %s } drop", r.fam, vip, l4, p.Port, r.fam, joined(ranges)))
		}
	}
	if !choice.HasAny {
		r.all("checks", append(external, cluster), "reject")
		return
	}
	svc := r.dnatChain(fmt.Sprintf("c%d", i), p, choice.Cluster)
	loc := r.dnatChain(fmt.Sprintf("l%d", i), p, choice.Local)
	internal := map[bool]string{false: svc, true: loc}[p.InternalPolicyLocal]
	if internal == "" {
		r.rule("checks", cluster+" drop")
	} else {
		r.rule("services", cluster+" goto "+internal)
	}
	if len(external) == 0 || svc == "" {
		r.all("checks", external, "drop")
		return
	}
	ext := fmt.Sprintf("x%d", i)
	r.chain(ext, "")
	if p.ExternalPolicyLocal {
		r.rule(ext, fmt.Sprintf("%s saddr %s goto %s", r.fam, r.cfg.ClusterCIDR, svc))
		r.rule(ext, "fib saddr type local mark set mark or "+r.mark)
		r.rule(ext, "fib saddr type local goto "+svc)
		if loc == "" {
			r.all("checks", external, "drop") // only traffic that was not short-circuited
		} else {
			r.rule(ext, "goto "+loc)
		}
	} else {
		r.rule(ext, "mark set mark or "+r.mark)
		r.rule(ext, "goto "+svc)
	}
	r.all("services", external, "goto "+ext)
}

// all adds "match verdict" to chain for every match.
func (r *nftScript) all(chain string, matches []string, verdict string) {
	for _, m := range matches {
		r.rule(chain, m+" "+verdict)
	}
}

// dnatChain creates chain name DNATing to eps (with ClientIP affinity when p has it) and
// hairpin masquerading for the local ones. It returns "" when eps is empty.
func (r *nftScript) dnatChain(name string, p *proxier.ServicePort, eps []endpoints.Endpoint) string {
	if len(eps) == 0 {
		return ""
	}
	r.chain(name, "")
	proto := strings.ToLower(string(p.Protocol))
	var elems []string
	for j, e := range eps {
		if e.Local {
			r.rule("nat-post", fmt.Sprintf("ct status dnat %s saddr %s %s daddr %s meta l4proto %s th dport %d masquerade",
				r.fam, e.IP, r.fam, e.IP, proto, e.Port))
		}
		if !p.ClientIPAffinity {
			elems = append(elems, fmt.Sprintf("%d : %s . %d", j, e.IP, e.Port))
			continue
		}
		set, epChain := fmt.Sprintf("%s-a%d", name, j), fmt.Sprintf("%s-e%d", name, j)
		r.decls = append(r.decls, fmt.Sprintf("add set %s npself %s { type %s_addr; flags dynamic,timeout; timeout %ds; }",
			r.fam, set, map[string]string{"ip": "ipv4", "ip6": "ipv6"}[r.fam], p.StickyMaxAgeSeconds))
		r.chain(epChain, "")
		r.rule(epChain, fmt.Sprintf("update @%s { %s saddr }", set, r.fam))
		r.rule(epChain, fmt.Sprintf("meta l4proto %s dnat to %s", proto, netip.AddrPortFrom(e.IP, uint16(e.Port))))
		r.rule(name, fmt.Sprintf("%s saddr @%s goto %s", r.fam, set, epChain))
		elems = append(elems, fmt.Sprintf("%d : goto %s", j, epChain))
	}
	if p.ClientIPAffinity {
		r.rule(name, fmt.Sprintf("numgen random mod %d vmap { %s }", len(eps), strings.Join(elems, ", ")))
	} else {
		r.rule(name, fmt.Sprintf("meta l4proto %s dnat %s addr . port to numgen random mod %d map { %s }",
			proto, r.fam, len(eps), strings.Join(elems, ", ")))
	}
	return name
}

func joined(pfxs []netip.Prefix) string {
	var s []string
	for _, p := range pfxs {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// runNFT applies script with `nft -f -` inside ns (through nsenter and an inherited fd).
func runNFT(ctx context.Context, ns netns.NsHandle, script string) error {
	fd, err := unix.Dup(int(ns))
	if err != nil {
		return fmt.Errorf("duplicating the namespace handle: %w", err)
	}
	nsFile := os.NewFile(uintptr(fd), "netns")
	defer nsFile.Close()
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/proc/self/fd/3", "nft", "-f", "-")
	cmd.ExtraFiles = []*os.File{nsFile}
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("applying the self-test ruleset: %w: %s\n%s", err, stderr.String(), script)
	}
	return nil
}
