package proxiertest

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
)

// Option changes which Cases RunTracer and RunKernel run.
type Option func(*runOptions)

type runOptions struct {
	only map[string]bool   // nil: every case
	skip map[string]string // case name → reason
}

// OnlyCases runs only the named cases (for a backend that implements a subset so far).
func OnlyCases(names ...string) Option {
	return func(o *runOptions) {
		if o.only == nil {
			o.only = map[string]bool{}
		}
		for _, n := range names {
			o.only[n] = true
		}
	}
}

// SkipCases skips the named cases with a reason shown in the test output, for behaviour a
// mode deliberately does not share (for example "clusterip-unknown-port" outside nftables mode).
func SkipCases(reason string, names ...string) Option {
	return func(o *runOptions) {
		if o.skip == nil {
			o.skip = map[string]string{}
		}
		for _, n := range names {
			o.skip[n] = reason
		}
	}
}

// selectCases applies opts to cases. It also returns the names in opts that match no case, so
// that callers can report them: a renamed case must not silently stop being skipped or chosen.
func selectCases(cases []Case, opts []Option) (run []Case, skip map[string]string, unknown []string) {
	var o runOptions
	for _, opt := range opts {
		opt(&o)
	}
	known := map[string]bool{}
	for _, c := range cases {
		known[c.Name] = true
		if o.only == nil || o.only[c.Name] {
			run = append(run, c)
		}
	}
	for n := range o.only {
		if !known[n] {
			unknown = append(unknown, n)
		}
	}
	for n := range o.skip {
		if !known[n] {
			unknown = append(unknown, n)
		}
	}
	sort.Strings(unknown)
	return run, o.skip, unknown
}

// casesFor returns the Cases of cfg.Family selected by opts, reporting unknown names in opts.
func casesFor(t *testing.T, cfg Config, opts []Option) ([]Case, map[string]string) {
	t.Helper()
	run, skip, unknown := selectCases(Cases(cfg.Family), opts)
	for _, n := range unknown {
		t.Errorf("OnlyCases/SkipCases name unknown case %q", n)
	}
	return run, skip
}

// RunTracer runs every Case of cfg.Family through trace, a backend's packet tracer over its
// fake ruleset, one subtest per Case. trace receives the Case with Dst resolved (never zero:
// NodePort cases carry cfg.NodeIP); SourceAddr(cfg, c) gives the probe's source address.
//
// A traced Reach must list exactly the endpoints the Case allows (with AnyOne: a non-empty
// subset of them) and match Masquerade and Sticky; Drop and Reject must match the verdict.
func RunTracer(t *testing.T, cfg Config, trace func(c Case) Traced, opts ...Option) {
	t.Helper()
	cases, skip := casesFor(t, cfg, opts)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if reason, ok := skip[c.Name]; ok {
				t.Skip(reason)
			}
			c.Dst = DestinationAddr(cfg, c)
			for _, problem := range compareTraced(c, trace(c)) {
				t.Errorf("%s %s %s → %s:%d: %s", c.Service, c.From, c.Protocol, c.Dst, c.Port, problem)
			}
		})
	}
}

// compareTraced returns what is wrong with a traced outcome for c (nil when it matches).
func compareTraced(c Case, got Traced) []string {
	want := c.Want
	if got.Verdict != want.Verdict {
		return []string{fmt.Sprintf("verdict %s, want %s (traced endpoints %v)", got.Verdict, want.Verdict, got.Endpoints)}
	}
	if want.Verdict != Reach {
		return nil
	}
	var problems []string
	gotSet, err := normalizeEndpoints(got.Endpoints)
	if err != nil {
		return []string{err.Error()}
	}
	wantSet, err := normalizeEndpoints(want.Endpoints)
	if err != nil {
		return []string{"bad Case: " + err.Error()}
	}
	switch {
	case want.AnyOne:
		if len(gotSet) == 0 || !isSubset(gotSet, wantSet) {
			problems = append(problems, fmt.Sprintf("endpoints %v, want a non-empty subset of %v", gotSet, wantSet))
		}
	case !slices.Equal(gotSet, wantSet):
		problems = append(problems, fmt.Sprintf("endpoints %v, want %v", gotSet, wantSet))
	}
	if got.Masquerade != want.Masquerade {
		problems = append(problems, fmt.Sprintf("masquerade %t, want %t", got.Masquerade, want.Masquerade))
	}
	if got.Sticky != want.Sticky {
		problems = append(problems, fmt.Sprintf("sticky %t, want %t", got.Sticky, want.Sticky))
	}
	return problems
}

// normalizeEndpoints parses "ip:port" strings and returns them canonical, sorted and unique.
func normalizeEndpoints(eps []string) ([]string, error) {
	set := map[string]bool{}
	for _, s := range eps {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("endpoint %q is not ip:port: %w", s, err)
		}
		set[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()] = true
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return out, nil
}

// isSubset reports whether every element of sub is in set (both sorted).
func isSubset(sub, set []string) bool {
	for _, s := range sub {
		if _, found := slices.BinarySearch(set, s); !found {
			return false
		}
	}
	return true
}
