package proxiertest

import (
	"errors"
	"net/netip"
	"testing"
)

// fakeProbes returns a probe function answering with obs in turn (the last one repeated),
// and a counter of calls.
func fakeProbes(obs ...observation) (func() observation, *int) {
	n := 0
	return func() observation {
		o := obs[min(n, len(obs)-1)]
		n++
		return o
	}, &n
}

func reached(ep, seen, own string) observation {
	return observation{verdict: Reach, endpoint: ep, seen: netip.MustParseAddr(seen), own: netip.MustParseAddr(own)}
}

// TestJudge checks the kernel harness's verdicts on synthetic probe outcomes, including that
// every loop is bounded.
func TestJudge(t *testing.T) {
	a, b := "10.244.1.10:8080", "10.244.2.10:8080"
	pod := "10.244.1.200"
	two := Case{Want: reach(false, a, b)}
	sticky := Case{Want: Want{Verdict: Reach, Endpoints: []string{a, b}, Sticky: true}}
	for _, tc := range []struct {
		name      string
		c         Case
		obs       []observation
		wantOK    bool
		maxProbes int
	}{
		{"both endpoints seen", two, []observation{reached(a, pod, pod), reached(a, pod, pod), reached(b, pod, pod)}, true, minReachProbes},
		{"late unexpected endpoint", Case{Want: reach(false, a)},
			[]observation{reached(a, pod, pod), reached(a, pod, pod), reached(b, pod, pod)}, false, 3},
		{"one endpoint never seen", two, []observation{reached(a, pod, pod)}, false, maxProbes},
		{"endpoint not allowed", two, []observation{reached("10.244.1.99:8080", pod, pod)}, false, 1},
		{"masqueraded but should not be", two, []observation{reached(a, "10.244.1.1", pod)}, false, 1},
		{"not masqueraded but should be", Case{Want: reach(true, a)}, []observation{reached(a, pod, pod)}, false, 1},
		{"masqueraded as wanted", Case{Want: reach(true, a)}, []observation{reached(a, "10.244.1.1", pod)}, true, minReachProbes},
		{"sticky holds", sticky, []observation{reached(b, pod, pod)}, true, stickyProbes},
		{"sticky broken", sticky, []observation{reached(b, pod, pod), reached(a, pod, pod)}, false, 2},
		{"drop wanted, dropped", Case{Want: dropped}, []observation{{verdict: Drop}}, true, 1},
		{"drop wanted, reached", Case{Want: dropped}, []observation{reached(a, pod, pod)}, false, 1},
		{"reject wanted, dropped", Case{Want: rejected}, []observation{{verdict: Drop}}, false, 1},
		{"harness error", Case{Want: rejected}, []observation{{err: errors.New("boom")}}, false, 1},
		{"AnyOne needs one", Case{Want: Want{Verdict: Reach, Endpoints: []string{a, b}, AnyOne: true}},
			[]observation{reached(b, pod, pod)}, true, 1},
	} {
		probe, calls := fakeProbes(tc.obs...)
		problems := judge(tc.c, probe)
		if (len(problems) == 0) != tc.wantOK {
			t.Errorf("%s: problems %v, want ok=%t", tc.name, problems, tc.wantOK)
		}
		if *calls > tc.maxProbes {
			t.Errorf("%s: %d probes, want at most %d", tc.name, *calls, tc.maxProbes)
		}
	}
}

// TestParseReply checks the echo reply parser.
func TestParseReply(t *testing.T) {
	o := parseReply("[fd00:10:244:1::a]:8080 fd00:10:244:1::c8\n")
	if o.err != nil || o.verdict != Reach || o.endpoint != "[fd00:10:244:1::a]:8080" || o.seen.String() != "fd00:10:244:1::c8" {
		t.Errorf("parseReply: %+v", o)
	}
	if o := parseReply("garbage"); o.err == nil {
		t.Errorf("parseReply accepted garbage: %+v", o)
	}
}

// TestSelectCases checks OnlyCases and SkipCases, and that unknown names are reported.
func TestSelectCases(t *testing.T) {
	cases := []Case{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	run, skip, unknown := selectCases(cases, []Option{OnlyCases("a", "c"), SkipCases("not here", "c", "zz")})
	if len(run) != 2 || run[0].Name != "a" || run[1].Name != "c" {
		t.Errorf("OnlyCases ran %v", run)
	}
	if skip["c"] != "not here" || len(unknown) != 1 || unknown[0] != "zz" {
		t.Errorf("skip %v, unknown %v", skip, unknown)
	}
	if run, _, unknown := selectCases(cases, nil); len(run) != 3 || len(unknown) != 0 {
		t.Errorf("no options ran %v, unknown %v", run, unknown)
	}
}
