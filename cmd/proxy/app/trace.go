package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/spf13/pflag"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/nftables"
)

// traceCommand is the name the trace subcommand's usage and errors use.
const traceCommand = "proxy trace"

const traceDescription = `Say what nodeproxy's nftables rules (the live ip/ip6 nodeproxy tables) do with a
new connection: which Service it reaches, the candidate endpoints, whether it is
masqueraded, or why it is dropped or rejected.`

// Where a traced connection comes from (--from).
const (
	fromPod     = "pod"
	fromNode    = "node"
	fromOutside = "outside"
)

// traceOptions are the trace subcommand's flags.
type traceOptions struct {
	src, dst, proto, from, iif, netnsPath string
	port                                  int
	json, help                            bool
}

// traceRequest is a validated trace.
type traceRequest struct {
	src, dst  netip.Addr
	protocol  v1.Protocol
	port      int32
	from, iif string
	netnsPath string
	json      bool
}

// runTrace runs `proxy trace`: it reads nodeproxy's tables from the kernel and explains what
// they do with a new connection. Errors are one line on stderr and exit code 1.
func runTrace(_ context.Context, args []string, stdout, stderr io.Writer) int {
	var o traceOptions
	fs := pflag.NewFlagSet(traceCommand, pflag.ContinueOnError)
	fs.StringVar(&o.src, "src", "", "source IP address of the connection (required)")
	fs.StringVar(&o.dst, "dst", "", "destination IP address (required)")
	fs.StringVar(&o.proto, "proto", "tcp", "protocol: tcp, udp or sctp")
	fs.IntVar(&o.port, "port", 0, "destination port (required)")
	fs.StringVar(&o.from, "from", "", "where the connection comes from: pod, node or outside (default: guessed from --src and the rules)")
	fs.StringVar(&o.iif, "iif", "", "interface the packet arrives on (for interface-based local traffic detectors)")
	fs.StringVar(&o.netnsPath, "netns", "", "network namespace to read, e.g. /var/run/netns/NAME (default: the current one)")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON")
	fs.BoolVarP(&o.help, "help", "h", false, "help for trace")
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "%s: %s\n", traceCommand, oneLine(err.Error()))
		return 1
	}
	err := fs.Parse(args)
	if o.help || errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintf(stdout, "%s\n\nUsage:\n  %s --src IP --dst IP --proto tcp|udp|sctp --port N [flags]\n\nFlags:\n%s",
			traceDescription, traceCommand, fs.FlagUsages())
		return 0
	}
	if err != nil {
		return fail(fmt.Errorf("parsing flags: %w", err))
	}
	if extra := nonEmptyArgs(fs.Args()); len(extra) > 0 {
		return fail(fmt.Errorf("takes no arguments, got %q", extra))
	}
	req, err := o.validate()
	if err != nil {
		return fail(err)
	}
	out, err := req.run()
	if err != nil {
		return fail(err)
	}
	_, _ = stdout.Write(out)
	return 0
}

// validate checks the flags and returns the trace they ask for.
func (o *traceOptions) validate() (*traceRequest, error) {
	req := &traceRequest{from: o.from, iif: o.iif, netnsPath: o.netnsPath, json: o.json}
	var err error
	if req.src, err = parseTraceAddr("--src", o.src); err != nil {
		return nil, err
	}
	if req.dst, err = parseTraceAddr("--dst", o.dst); err != nil {
		return nil, err
	}
	if req.src.Is4() != req.dst.Is4() {
		return nil, fmt.Errorf("--src %s and --dst %s are of different IP families", req.src, req.dst)
	}
	switch p := strings.ToLower(o.proto); p {
	case "tcp", "udp", "sctp":
		req.protocol = v1.Protocol(strings.ToUpper(p))
	default:
		return nil, fmt.Errorf("--proto %q: want tcp, udp or sctp", o.proto)
	}
	if o.port < 1 || o.port > 65535 {
		return nil, fmt.Errorf("--port %d: want a port in 1-65535", o.port)
	}
	req.port = int32(o.port)
	switch o.from {
	case "", fromPod, fromNode, fromOutside:
	default:
		return nil, fmt.Errorf("--from %q: want pod, node or outside", o.from)
	}
	if len(o.iif) >= unix.IFNAMSIZ || strings.ContainsAny(o.iif, "/ \t\n") {
		return nil, fmt.Errorf("--iif %q is not an interface name", o.iif)
	}
	if o.iif != "" && o.from == fromNode {
		return nil, fmt.Errorf("--iif does not apply to --from node: the node's own packets arrive on no interface")
	}
	return req, nil
}

// parseTraceAddr parses a required address flag.
func parseTraceAddr(flag, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, fmt.Errorf("%s is required", flag)
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IP address", flag, s)
	}
	ip = ip.Unmap()
	if ip.IsUnspecified() || ip.IsMulticast() {
		return netip.Addr{}, fmt.Errorf("%s %s is not a unicast address", flag, ip)
	}
	return ip, nil
}

// run reads the rules and the node's addresses and explains the trace.
func (req *traceRequest) run() ([]byte, error) {
	nsFd, closeNS, err := openTraceNetns(req.netnsPath)
	if err != nil {
		return nil, err
	}
	defer closeNS()
	rs, err := nftables.ReadKernel(nsFd)
	if err != nil {
		return nil, fmt.Errorf("reading the nftables rules: %w", err)
	}
	local, err := localAddrs(nsFd)
	if err != nil {
		return nil, err
	}
	fam := v1.IPv4Protocol
	if !req.dst.Is4() {
		fam = v1.IPv6Protocol
	}
	from, iif, note := req.origin(local, rs.LocalTraffic(fam))
	p := nftables.Packet{Src: req.src, Dst: req.dst, Protocol: req.protocol, Port: req.port, IIFName: iif, FromHost: from == fromNode}
	ex, err := rs.Explain(p, nftables.TraceNode{LocalAddrs: local})
	if err != nil {
		return nil, err
	}
	rep := newTraceReport(req, from, note, ex)
	if req.json {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encoding the result: %w", err)
		}
		return append(b, '\n'), nil
	}
	return rep.text(), nil
}

// openTraceNetns opens the network namespace at path ("" : the current one, fd 0).
func openTraceNetns(path string) (int, func(), error) {
	if path == "" {
		return 0, func() {}, nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return 0, nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(h), &st); err != nil || st.Type != unix.NSFS_MAGIC {
		_ = h.Close()
		return 0, nil, fmt.Errorf("%s is not a network namespace", path)
	}
	return int(h), func() { _ = h.Close() }, nil
}

// localAddrs returns the addresses of the namespace's interfaces (nsFd 0: the current one).
func localAddrs(nsFd int) ([]netip.Addr, error) {
	var h *netlink.Handle
	var err error
	if nsFd == 0 {
		h, err = netlink.NewHandle()
	} else {
		h, err = netlink.NewHandleAt(netns.NsHandle(nsFd))
	}
	if err != nil {
		return nil, fmt.Errorf("opening a netlink handle: %w", err)
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// origin decides where the connection comes from (--from, else guessed from the source and
// the rules' local traffic detector) and the interface it arrives on. note warns when --from
// says otherwise than the rules will see.
func (req *traceRequest) origin(local []netip.Addr, lt nftables.LocalTraffic) (from, iif, note string) {
	isLocal := false
	for _, ip := range local {
		isLocal = isLocal || ip == req.src
	}
	detected := lt.SourceCIDR.IsValid() && lt.SourceCIDR.Contains(req.src)
	if lt.Interface != "" && req.iif != "" {
		detected = req.iif == lt.Interface || (lt.InterfacePrefix && strings.HasPrefix(req.iif, lt.Interface))
	}
	from, iif = req.from, req.iif
	switch {
	case from == "" && isLocal:
		from = fromNode
	case from == "" && detected:
		from = fromPod
	case from == "":
		from = fromOutside
	case from == fromPod && lt.SourceCIDR.IsValid() && !detected:
		note = fmt.Sprintf("the rules see local pods by source address in %s; %s is not in it", lt.SourceCIDR, req.src)
	case from == fromNode && !isLocal:
		note = fmt.Sprintf("%s is not an address of this node", req.src)
	}
	if from == fromPod && iif == "" && lt.Interface != "" {
		iif = lt.Interface // the pod interface the rules recognise (a prefix matches itself)
	}
	return from, iif, note
}

// traceReport is the result of `proxy trace` (--json prints it as is).
type traceReport struct {
	Source string `json:"source"`
	From   string `json:"from"`
	// FromGuessed: From was guessed (no --from).
	FromGuessed bool `json:"fromGuessed,omitempty"`
	// FromNote warns when the rules will not see the packet as coming from From.
	FromNote    string `json:"fromNote,omitempty"`
	Destination string `json:"destination"`
	Protocol    string `json:"protocol"`
	// Outcome is "reach" (DNATed to one of Candidates), "reject", "drop" or "no-match".
	Outcome                    string   `json:"outcome"`
	Reason                     string   `json:"reason,omitempty"`
	Service                    string   `json:"service,omitempty"`
	Frontend                   string   `json:"frontend,omitempty"`
	ExternalTrafficPolicyLocal bool     `json:"externalTrafficPolicyLocal,omitempty"`
	Candidates                 []string `json:"candidates"`
	Masquerade                 bool     `json:"masquerade"`
	MasqueradeReason           string   `json:"masqueradeReason,omitempty"`
	Hairpin                    []string `json:"hairpin,omitempty"`
	SessionAffinitySeconds     int      `json:"sessionAffinitySeconds,omitempty"`
}

// newTraceReport builds the report of an explained trace.
func newTraceReport(req *traceRequest, from, note string, ex nftables.Explanation) *traceReport {
	rep := &traceReport{
		Source: req.src.String(), From: from, FromGuessed: req.from == "", FromNote: note,
		Destination: netip.AddrPortFrom(req.dst, uint16(req.port)).String(), Protocol: strings.ToLower(string(req.protocol)),
		Reason: ex.Reason, Service: ex.Service, Frontend: ex.Frontend, ExternalTrafficPolicyLocal: ex.ExternalPolicyLocal,
		Candidates: []string{}, Masquerade: ex.Masquerade, MasqueradeReason: ex.MasqueradeReason,
		SessionAffinitySeconds: ex.AffinitySeconds,
	}
	for _, ep := range ex.Endpoints {
		rep.Candidates = append(rep.Candidates, ep.String())
	}
	for _, ep := range ex.Hairpin {
		rep.Hairpin = append(rep.Hairpin, ep.String())
	}
	switch {
	case ex.Verdict == nftables.TraceAccept && len(ex.Endpoints) > 0:
		rep.Outcome = "reach"
	case ex.Verdict == nftables.TraceAccept:
		rep.Outcome = "no-match"
	default:
		rep.Outcome = ex.Verdict
	}
	return rep
}

// text renders the report for people: a headline and a few indented lines.
func (rep *traceReport) text() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s (%s) -> %s/%s: ", rep.Source, rep.From, rep.Destination, rep.Protocol)
	switch {
	case rep.Outcome == "no-match":
		b.WriteString(rep.Reason + "\n")
	case rep.Service == "":
		b.WriteString("no Service\n")
	default:
		detail := rep.Frontend
		if rep.ExternalTrafficPolicyLocal {
			detail += ", externalTrafficPolicy Local"
		}
		fmt.Fprintf(&b, "Service %s (%s)\n", rep.Service, detail)
	}
	if rep.FromNote != "" {
		fmt.Fprintf(&b, "  note: %s\n", rep.FromNote)
	}
	switch rep.Outcome {
	case "reach":
		fmt.Fprintf(&b, "  candidates (%d): %s\n", len(rep.Candidates), strings.Join(rep.Candidates, " "))
		masq := map[bool]string{true: "yes", false: "no"}[rep.Masquerade]
		if rep.MasqueradeReason != "" {
			masq += " (" + rep.MasqueradeReason + ")"
		}
		fmt.Fprintf(&b, "  masquerade: %s\n", masq)
		if rep.SessionAffinitySeconds > 0 {
			fmt.Fprintf(&b, "  session affinity: ClientIP, %ds\n", rep.SessionAffinitySeconds)
		}
	case "reject", "drop":
		fmt.Fprintf(&b, "  verdict: %s (%s)\n", rep.Outcome, rep.Reason)
	}
	return b.Bytes()
}
