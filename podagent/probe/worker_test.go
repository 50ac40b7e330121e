package probe

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestTimingOfAppliesAPIDefaults(t *testing.T) {
	got := TimingOf(&v1.Probe{})
	want := Timing{Period: 10 * time.Second, Timeout: time.Second, SuccessThreshold: 1, FailureThreshold: 3}
	if got != want {
		t.Errorf("defaults: got %+v, want %+v", got, want)
	}
	got = TimingOf(&v1.Probe{InitialDelaySeconds: 5, PeriodSeconds: 2, TimeoutSeconds: 4, SuccessThreshold: 2, FailureThreshold: 7})
	want = Timing{InitialDelay: 5 * time.Second, Period: 2 * time.Second, Timeout: 4 * time.Second, SuccessThreshold: 2, FailureThreshold: 7}
	if got != want {
		t.Errorf("explicit: got %+v, want %+v", got, want)
	}
}

func TestTrackerSuccessThreshold(t *testing.T) {
	tr := NewTracker(Readiness, Timing{SuccessThreshold: 3, FailureThreshold: 1})
	if tr.Current != Failure {
		t.Fatalf("readiness starts as %v, want Failure", tr.Current)
	}
	steps := []struct {
		in      Result
		reached bool
		current Result
	}{
		{Success, false, Failure}, {Success, false, Failure},
		{Failure, true, Failure}, // a failure breaks the run of successes
		{Success, false, Failure}, {Success, false, Failure}, {Success, true, Success},
		{Success, true, Success},
		{Failure, true, Failure}, // failure threshold 1
	}
	for i, s := range steps {
		if got := tr.Observe(s.in); got != s.reached || tr.Current != s.current {
			t.Fatalf("step %d (%v): reached %v current %v, want %v %v", i, s.in, got, tr.Current, s.reached, s.current)
		}
	}
}

func TestTrackerFailureThreshold(t *testing.T) {
	tr := NewTracker(Liveness, Timing{SuccessThreshold: 1, FailureThreshold: 3})
	if tr.Current != Success {
		t.Fatalf("liveness starts as %v, want Success", tr.Current)
	}
	for i, in := range []Result{Failure, Failure, Success, Failure, Failure} {
		tr.Observe(in)
		if tr.Current != Success {
			t.Fatalf("after %d results: %v, want still Success", i+1, tr.Current)
		}
	}
	if !tr.Observe(Failure) || tr.Current != Failure {
		t.Fatalf("third consecutive failure: current %v, want Failure", tr.Current)
	}
	if NewTracker(Startup, Timing{}).Current != Unknown {
		t.Error("startup should start as Unknown")
	}
}

// scripted is a Runner returning results in order (then the last one forever) and
// reporting each attempt with the time left before its deadline.
type scripted struct {
	results  []Result
	attempts chan time.Duration
}

func (s *scripted) Probe(ctx context.Context) (Result, string) {
	deadline, _ := ctx.Deadline()
	s.attempts <- time.Until(deadline)
	r := s.results[0]
	if len(s.results) > 1 {
		s.results = s.results[1:]
	}
	return r, "scripted " + r.String()
}

type change struct {
	r   Result
	msg string
}

// startWorker runs a worker on a fake clock; it returns the clock, the attempts, the
// reported changes and a channel closed when Run returns.
func startWorker(t *testing.T, kind Kind, timing Timing, results ...Result) (*clocktesting.FakeClock, *scripted, chan change, chan struct{}) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	runner := &scripted{results: results, attempts: make(chan time.Duration, 100)}
	changes := make(chan change, 100)
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); <-done })
	w := &Worker{Kind: kind, Timing: timing, Runner: runner, Clock: clk, OnChange: func(r Result, msg string) { changes <- change{r, msg} }}
	go func() { defer close(done); w.Run(ctx, clk.Now()) }()
	return clk, runner, changes, done
}

// step waits for the worker to wait on the clock, then advances it.
func step(t *testing.T, clk *clocktesting.FakeClock, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !clk.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("worker never waited on the clock")
		}
		time.Sleep(time.Millisecond)
	}
	clk.Step(d)
}

func expectAttempts(t *testing.T, s *scripted, n int) {
	t.Helper()
	for i := range n {
		select {
		case <-s.attempts:
		case <-time.After(10 * time.Second):
			t.Fatalf("attempt %d of %d did not happen", i+1, n)
		}
	}
}

func expectNoAttempt(t *testing.T, s *scripted) {
	t.Helper()
	select {
	case <-s.attempts:
		t.Fatal("unexpected probe attempt")
	case <-time.After(50 * time.Millisecond):
	}
}

func TestWorkerWaitsInitialDelayThenProbesEveryPeriod(t *testing.T) {
	timing := Timing{InitialDelay: 5 * time.Second, Period: 3 * time.Second, Timeout: time.Second, SuccessThreshold: 1, FailureThreshold: 3}
	clk, runner, _, _ := startWorker(t, Readiness, timing, Success)
	step(t, clk, 4*time.Second)
	expectNoAttempt(t, runner)
	step(t, clk, time.Second)
	expectAttempts(t, runner, 1)
	step(t, clk, 2*time.Second)
	expectNoAttempt(t, runner)
	clk.Step(time.Second)
	expectAttempts(t, runner, 1)
	clk.Step(3 * time.Second)
	expectAttempts(t, runner, 1)
}

func TestWorkerGivesEachAttemptTheTimeout(t *testing.T) {
	timing := Timing{Period: time.Second, Timeout: 7 * time.Second, SuccessThreshold: 1, FailureThreshold: 3}
	_, runner, _, _ := startWorker(t, Readiness, timing, Success)
	if left := <-runner.attempts; left <= 5*time.Second || left > 7*time.Second {
		t.Errorf("attempt had %v before its deadline, want about 7s", left)
	}
}

func TestWorkerReportsReadinessAfterThresholds(t *testing.T) {
	timing := Timing{Period: time.Second, Timeout: time.Second, SuccessThreshold: 2, FailureThreshold: 2}
	clk, runner, changes, _ := startWorker(t, Readiness, timing, Success, Success, Failure, Failure, Success)
	expectAttempts(t, runner, 1)
	for i := range 4 {
		step(t, clk, time.Second)
		expectAttempts(t, runner, 1)
		if i == 0 {
			if c := <-changes; c.r != Success {
				t.Fatalf("after 2 successes: change %v, want Success", c.r)
			}
		}
	}
	if c := <-changes; c.r != Failure || c.msg != "scripted Failure" {
		t.Fatalf("after 2 failures: change %+v, want Failure with the attempt's message", c)
	}
	select {
	case c := <-changes:
		t.Fatalf("a single success must not report, got %+v", c)
	default:
	}
}

func TestWorkerLivenessStopsAfterFailureThreshold(t *testing.T) {
	timing := Timing{Period: time.Second, Timeout: time.Second, SuccessThreshold: 1, FailureThreshold: 3}
	clk, runner, changes, done := startWorker(t, Liveness, timing, Failure)
	expectAttempts(t, runner, 1)
	step(t, clk, time.Second)
	expectAttempts(t, runner, 1)
	if len(changes) != 0 {
		t.Fatal("liveness reported failure before the threshold")
	}
	step(t, clk, time.Second)
	expectAttempts(t, runner, 1)
	if c := <-changes; c.r != Failure {
		t.Fatalf("got %v, want Failure", c.r)
	}
	<-done
}

func TestWorkerStartupStopsAtVerdict(t *testing.T) {
	timing := Timing{Period: time.Second, Timeout: time.Second, SuccessThreshold: 1, FailureThreshold: 3}
	clk, runner, changes, done := startWorker(t, Startup, timing, Failure, Success)
	expectAttempts(t, runner, 1)
	step(t, clk, time.Second)
	expectAttempts(t, runner, 1)
	if c := <-changes; c.r != Success {
		t.Fatalf("got %v, want Success", c.r)
	}
	<-done
}
