package runner

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

const (
	testMin   = 1 * time.Second
	testRetry = 5 * time.Second
	testMax   = 10 * time.Second

	// eventTimeout only bounds a broken test; passing runs never wait this long.
	eventTimeout = 5 * time.Second
	// quietWait is the short hand-off wait used to check that nothing happens.
	quietWait = 20 * time.Millisecond
)

// Event kinds seen by the harness, in the order the loop goroutine produced them.
const (
	kindRun      = "run"
	kindIdle     = phaseIdle
	kindCooldown = phaseCooldown
)

type event struct {
	kind string
	at   time.Duration // fake time since the harness started
	call int32         // for kindRun: the call number, from 1
}

// outcome tells the harness's fn how to finish one call.
type outcome struct {
	takes      time.Duration // fake time the call consumes (the clock is stepped inside fn)
	err        error
	panicValue any
}

// harness drives a Runner on a fake clock. fn and the blocked hook report every step of the loop
// on one unbuffered channel, so the test sees them in order; fn then waits for the test to tell it
// how to finish.
type harness struct {
	t        *testing.T
	clk      *clocktesting.FakeClock
	start    time.Time
	runner   *Runner
	events   chan event
	outcomes chan outcome
	quit     chan struct{}
	calls    atomic.Int32
	inFlight atomic.Int32
	overlaps atomic.Int32
	cancel   context.CancelFunc
	done     chan struct{}
}

func newHarness(t *testing.T, minInterval, retryInterval, maxInterval time.Duration) *harness {
	t.Helper()
	h := &harness{
		t:        t,
		clk:      clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		events:   make(chan event),
		outcomes: make(chan outcome),
		quit:     make(chan struct{}),
	}
	h.start = h.clk.Now()
	r, err := New("test", h.fn, minInterval, retryInterval, maxInterval, h.clk)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r.blockedHook = func(phase string) { h.send(event{kind: phase, at: h.now()}) }
	h.runner = r
	t.Cleanup(func() {
		close(h.quit)
		h.stop()
		if n := h.overlaps.Load(); n != 0 {
			t.Errorf("fn ran concurrently with itself %d times", n)
		}
	})
	return h
}

func (h *harness) now() time.Duration { return h.clk.Since(h.start) }

func (h *harness) send(e event) {
	select {
	case h.events <- e:
	case <-h.quit:
	}
}

// fn is the runner's function: it reports the call, then finishes as the test says.
func (h *harness) fn() error {
	if h.inFlight.Add(1) > 1 {
		h.overlaps.Add(1)
	}
	defer h.inFlight.Add(-1)
	n := h.calls.Add(1)
	h.send(event{kind: kindRun, at: h.now(), call: n})
	var o outcome
	select {
	case o = <-h.outcomes:
	case <-h.quit:
		return nil
	}
	if o.takes > 0 {
		h.clk.Step(o.takes)
	}
	if o.panicValue != nil {
		panic(o.panicValue)
	}
	return o.err
}

// startLoop runs Loop in a goroutine and waits until it reports being idle.
func (h *harness) startLoop() {
	h.t.Helper()
	h.startLoopNoWait()
	h.expect(kindIdle, 0)
}

func (h *harness) startLoopNoWait() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan struct{})
	go func() {
		defer close(h.done)
		h.runner.Loop(ctx)
	}()
}

// stop cancels the loop and waits for Loop to return; it reports whether it did in time.
func (h *harness) stop() bool {
	if h.cancel == nil {
		return true
	}
	h.cancel()
	select {
	case <-h.done:
		return true
	case <-time.After(eventTimeout):
		return false
	}
}

// next returns the next event from the loop.
func (h *harness) next() event {
	h.t.Helper()
	select {
	case e := <-h.events:
		return e
	case <-time.After(eventTimeout):
		h.t.Fatalf("timed out waiting for an event from the loop (fake time +%v, %d calls)", h.now(), h.calls.Load())
		return event{}
	}
}

// expect asserts that the next event has this kind and happened at this fake time.
func (h *harness) expect(kind string, at time.Duration) event {
	h.t.Helper()
	e := h.next()
	if e.kind != kind || e.at != at {
		h.t.Fatalf("got event %q at +%v, want %q at +%v", e.kind, e.at, kind, at)
	}
	return e
}

// expectRun asserts that fn started at fake time at, as call number call, and finishes it with o.
func (h *harness) expectRun(at time.Duration, call int32, o outcome) {
	h.t.Helper()
	h.expectRunStart(at, call)
	h.finishRun(o)
}

func (h *harness) expectRunStart(at time.Duration, call int32) {
	h.t.Helper()
	if e := h.expect(kindRun, at); e.call != call {
		h.t.Fatalf("fn started as call %d, want call %d", e.call, call)
	}
}

func (h *harness) finishRun(o outcome) {
	h.t.Helper()
	select {
	case h.outcomes <- o:
	case <-time.After(eventTimeout):
		h.t.Fatalf("timed out handing the outcome to fn")
	}
}

// expectQuiet asserts that the loop produces no event for a short while.
func (h *harness) expectQuiet() {
	h.t.Helper()
	select {
	case e := <-h.events:
		h.t.Fatalf("unexpected event %q at +%v (call %d)", e.kind, e.at, e.call)
	case <-time.After(quietWait):
	}
}

func (h *harness) expectCalls(want int32) {
	h.t.Helper()
	if got := h.calls.Load(); got != want {
		h.t.Fatalf("fn was called %d times, want %d", got, want)
	}
}

func TestNewValidatesArguments(t *testing.T) {
	ok := func() error { return nil }
	tests := []struct {
		name                     string
		fn                       func() error
		minInt, retryInt, maxInt time.Duration
		wantErr                  bool
	}{
		{name: "valid", fn: ok, minInt: time.Second, retryInt: 30 * time.Second, maxInt: time.Hour},
		{name: "zero minInterval is allowed", fn: ok, minInt: 0, retryInt: time.Second, maxInt: time.Hour},
		{name: "max equal to min is allowed", fn: ok, minInt: time.Minute, retryInt: time.Second, maxInt: time.Minute},
		{name: "retry above max is allowed (capped)", fn: ok, minInt: 0, retryInt: 2 * time.Hour, maxInt: time.Hour},
		{name: "max below min", fn: ok, minInt: time.Minute, retryInt: time.Second, maxInt: time.Second, wantErr: true},
		{name: "negative min", fn: ok, minInt: -time.Second, retryInt: time.Second, maxInt: time.Hour, wantErr: true},
		{name: "zero retry", fn: ok, minInt: 0, retryInt: 0, maxInt: time.Hour, wantErr: true},
		{name: "negative retry", fn: ok, minInt: 0, retryInt: -time.Second, maxInt: time.Hour, wantErr: true},
		{name: "zero max", fn: ok, minInt: 0, retryInt: time.Second, maxInt: 0, wantErr: true},
		{name: "nil fn", fn: nil, minInt: 0, retryInt: time.Second, maxInt: time.Hour, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New("test", tc.fn, tc.minInt, tc.retryInt, tc.maxInt, nil)
			if tc.wantErr {
				if err == nil || r != nil {
					t.Fatalf("New = (%v, %v), want (nil, error)", r, err)
				}
				return
			}
			if err != nil || r == nil {
				t.Fatalf("New = (%v, %v), want a runner", r, err)
			}
			if _, isReal := r.clock.(clock.RealClock); !isReal {
				t.Errorf("nil clock became %T, want clock.RealClock", r.clock)
			}
		})
	}
}

// Guarantee 6: without Run(), the first run waits for maxInterval.
func TestFirstRunWaitsForMaxIntervalWithoutRequest(t *testing.T) {
	h := newHarness(t, testMin, testRetry, testMax)
	h.startLoop()
	h.clk.Step(testMax - time.Nanosecond)
	h.expectQuiet()
	h.expectCalls(0)
	h.clk.Step(time.Nanosecond)
	h.expectRun(testMax, 1, outcome{})
	h.expect(kindCooldown, testMax)
}

// Guarantee 6: the first Run() runs fn at once; a Run() made before Loop started is kept.
func TestFirstRunOnRequest(t *testing.T) {
	t.Run("request after start", func(t *testing.T) {
		h := newHarness(t, testMin, testRetry, testMax)
		h.startLoop()
		h.runner.Run()
		h.expectRun(0, 1, outcome{})
		h.expect(kindCooldown, 0)
	})
	t.Run("request before start", func(t *testing.T) {
		h := newHarness(t, testMin, testRetry, testMax)
		h.runner.Run()
		h.startLoopNoWait()
		h.expectRun(0, 1, outcome{}) // no idle event first: the request was already pending
		h.expect(kindCooldown, 0)
	})
}

// Run never blocks, with or without a loop, however often it is called.
func TestRunNeverBlocks(t *testing.T) {
	r, err := New("test", func() error { return nil }, testMin, testRetry, testMax, clocktesting.NewFakeClock(time.Now()))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			r.Run()
		}
	}()
	select {
	case <-done:
	case <-time.After(eventTimeout):
		t.Fatal("Run blocked without a loop")
	}
	if n := len(r.requests); n != 1 {
		t.Fatalf("%d pending requests after 1000 Run calls, want 1", n)
	}
}

// Guarantee 2: a Run() during the cooldown is served exactly when the cooldown ends, and the
// cooldown is measured from the END of the run.
func TestCooldownDefersRequest(t *testing.T) {
	h := newHarness(t, testMin, testRetry, testMax)
	h.startLoop()
	h.runner.Run()
	const runTakes = 300 * time.Millisecond
	h.expectRun(0, 1, outcome{takes: runTakes})
	h.expect(kindCooldown, runTakes)

	h.clk.Step(500 * time.Millisecond)
	h.runner.Run()
	h.expectQuiet()
	h.clk.Step(499 * time.Millisecond) // 1ms short of the cooldown's end
	h.expectQuiet()
	h.expectCalls(1)

	h.clk.Step(time.Millisecond)
	h.expectRun(runTakes+testMin, 2, outcome{}) // no idle event: the request was pending
	h.expect(kindCooldown, runTakes+testMin)
}

// Guarantee 3: many Run() calls during a run and during the cooldown give exactly one more run.
func TestRequestsDuringRunAndCooldownCoalesce(t *testing.T) {
	h := newHarness(t, testMin, testRetry, testMax)
	h.startLoop()
	h.runner.Run()
	h.expectRunStart(0, 1)
	for range 10 {
		h.runner.Run()
	}
	h.finishRun(outcome{})
	h.expect(kindCooldown, 0)
	for range 10 {
		h.runner.Run()
	}
	h.clk.Step(testMin)
	h.expectRun(testMin, 2, outcome{})
	h.expect(kindCooldown, testMin)

	h.clk.Step(testMin)
	// Idle is only reported when no request is pending: the 20 requests were all used up.
	h.expect(kindIdle, 2*testMin)
	h.expectCalls(2)

	// Guarantee 4: with no request, the next run is the periodic one, maxInterval after the last.
	h.clk.Step(testMax - testMin)
	h.expectRun(testMin+testMax, 3, outcome{})
	h.expect(kindCooldown, testMin+testMax)
}

// Guarantee 3: a request that arrives together with the deadline does not cause a second run.
func TestRequestRacingDeadlineCoalesces(t *testing.T) {
	h := newHarness(t, testMin, testRetry, testMax)
	h.startLoop()
	h.runner.Run()
	h.expectRun(0, 1, outcome{})
	h.expect(kindCooldown, 0)
	// During the cooldown the periodic deadline passes and a request arrives.
	h.runner.Run()
	h.clk.Step(testMax)
	h.expectRun(testMax, 2, outcome{})
	h.expect(kindCooldown, testMax)
	h.clk.Step(testMin)
	h.expect(kindIdle, testMax+testMin)
	h.expectCalls(2)
}

// Guarantee 4: a failed run is retried after retryInterval; the next success goes back to the
// periodic maxInterval.
func TestErrorSchedulesRetry(t *testing.T) {
	h := newHarness(t, testMin, testRetry, testMax)
	h.startLoop()
	h.runner.Run()
	h.expectRun(0, 1, outcome{err: errors.New("sync failed")})
	h.expect(kindCooldown, 0)
	h.clk.Step(testMin)
	h.expect(kindIdle, testMin)
	h.clk.Step(testRetry - testMin - time.Nanosecond)
	h.expectQuiet()
	h.clk.Step(time.Nanosecond)
	h.expectRun(testRetry, 2, outcome{})
	h.expect(kindCooldown, testRetry)
	h.clk.Step(testMin)
	h.expect(kindIdle, testRetry+testMin)
	h.clk.Step(testMax - testMin - time.Nanosecond)
	h.expectQuiet()
	h.clk.Step(time.Nanosecond)
	h.expectRun(testRetry+testMax, 3, outcome{})
}

// Guarantee 4: retryInterval is capped at maxInterval.
func TestRetryIntervalCappedByMaxInterval(t *testing.T) {
	h := newHarness(t, testMin, 3*testMax, testMax)
	h.startLoop()
	h.runner.Run()
	h.expectRun(0, 1, outcome{err: errors.New("sync failed")})
	h.expect(kindCooldown, 0)
	h.clk.Step(testMin)
	h.expect(kindIdle, testMin)
	h.clk.Step(testMax - testMin)
	h.expectRun(testMax, 2, outcome{})
}

// Guarantee 4: a successful requested run replaces a pending retry with the periodic deadline.
func TestSuccessfulRunCancelsRetry(t *testing.T) {
	h := newHarness(t, testMin, testRetry, testMax)
	h.startLoop()
	h.runner.Run()
	h.expectRun(0, 1, outcome{err: errors.New("sync failed")})
	h.expect(kindCooldown, 0)
	h.runner.Run()
	h.clk.Step(testMin)
	h.expectRun(testMin, 2, outcome{})
	h.expect(kindCooldown, testMin)
	h.clk.Step(testMin)
	h.expect(kindIdle, 2*testMin)
	h.clk.Step(testRetry) // past the old retry deadline
	h.expectQuiet()
	h.clk.Step(testMax - testMin - testRetry)
	h.expectRun(testMin+testMax, 3, outcome{})
}

// Guarantee 5: a panic in fn is recovered and retried like an error; the loop keeps going.
func TestPanicIsRecoveredAndRetried(t *testing.T) {
	h := newHarness(t, testMin, testRetry, testMax)
	h.startLoop()
	h.runner.Run()
	h.expectRun(0, 1, outcome{panicValue: "boom"})
	h.expect(kindCooldown, 0)
	h.clk.Step(testMin)
	h.expect(kindIdle, testMin)
	h.clk.Step(testRetry - testMin)
	h.expectRun(testRetry, 2, outcome{})
	h.expect(kindCooldown, testRetry)
	// Requests still work after the panic.
	h.runner.Run()
	h.clk.Step(testMin)
	h.expectRun(testRetry+testMin, 3, outcome{})
}

// Guarantee 5: Loop returns promptly when its context is cancelled, idle or cooling down, and
// leaves no timer behind.
func TestLoopReturnsOnCancel(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		h := newHarness(t, testMin, testRetry, testMax)
		h.startLoop()
		if !h.stop() {
			t.Fatal("Loop did not return after cancel while idle")
		}
		if n := h.clk.Waiters(); n != 0 {
			t.Errorf("%d timers left on the clock after Loop returned, want 0", n)
		}
	})
	t.Run("cooldown", func(t *testing.T) {
		h := newHarness(t, testMin, testRetry, testMax)
		h.startLoop()
		h.runner.Run()
		h.expectRun(0, 1, outcome{})
		h.expect(kindCooldown, 0)
		h.runner.Run() // pending, but must not be served once cancelled
		if !h.stop() {
			t.Fatal("Loop did not return after cancel during the cooldown")
		}
		h.expectCalls(1)
		if n := h.clk.Waiters(); n != 0 {
			t.Errorf("%d timers left on the clock after Loop returned, want 0", n)
		}
	})
	t.Run("cancelled during a run", func(t *testing.T) {
		h := newHarness(t, testMin, testRetry, testMax)
		h.startLoop()
		h.runner.Run()
		h.expectRunStart(0, 1)
		h.cancel()
		h.finishRun(outcome{})
		select {
		case <-h.done:
		case <-time.After(eventTimeout):
			t.Fatal("Loop did not return after a run finished with its context cancelled")
		}
	})
}

// Guarantee 1: a second Loop while one is active returns at once, so fn is never run by two loops.
func TestSecondLoopReturnsImmediately(t *testing.T) {
	h := newHarness(t, testMin, testRetry, testMax)
	h.startLoop()
	second := make(chan struct{})
	go func() {
		defer close(second)
		h.runner.Loop(context.Background()) // would never return if it were accepted
	}()
	select {
	case <-second:
	case <-time.After(eventTimeout):
		t.Fatal("second Loop call did not return")
	}
	h.runner.Run()
	h.expectRun(0, 1, outcome{})
	h.expect(kindCooldown, 0)
	h.expectQuiet()
	h.expectCalls(1)

	// Once the first loop has stopped, Loop can be started again.
	if !h.stop() {
		t.Fatal("Loop did not return after cancel")
	}
	h.startLoop()
	h.runner.Run()
	h.expectRun(0, 2, outcome{})
}

// With minInterval 0 there is no cooldown: a request made during a run is served right after it.
func TestZeroMinIntervalHasNoCooldown(t *testing.T) {
	h := newHarness(t, 0, testRetry, testMax)
	h.startLoop()
	h.runner.Run()
	h.expectRunStart(0, 1)
	h.runner.Run()
	h.finishRun(outcome{})
	h.expectRun(0, 2, outcome{})
	h.expect(kindIdle, 0)
	h.expectCalls(2)
}

// The real clock works end to end (no fake clock, no hook).
func TestRealClock(t *testing.T) {
	calls := make(chan struct{}, 10)
	r, err := New("real", func() error { calls <- struct{}{}; return nil }, 0, time.Hour, time.Hour, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Loop(ctx)
	}()
	r.Run()
	select {
	case <-calls:
	case <-time.After(eventTimeout):
		t.Fatal("fn was not called after Run with the real clock")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(eventTimeout):
		t.Fatal("Loop did not return after cancel")
	}
}
