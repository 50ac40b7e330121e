// Package runner schedules the proxy's sync function: it runs it on request, but never more often
// than a minimum interval, retries it after a failure, and runs it periodically when nothing asks
// for it (the equivalent of upstream kube-proxy's BoundedFrequencyRunner).
//
//	r, err := runner.New("sync-proxy-rules", syncProxyRules, minSyncPeriod, syncPeriod, time.Hour, nil)
//	go r.Loop(ctx)
//	r.Run() // from any goroutine, whenever state changed
package runner

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Phases reported to the blocked hook (tests only).
const (
	phaseIdle     = "idle"     // waiting for a Run() request or the retry/periodic deadline
	phaseCooldown = "cooldown" // waiting for minInterval to pass after a run
)

// Runner runs a function on request, with bounded frequency. Loop drives it; Run asks for a run.
//
// Guarantees:
//  1. fn never runs concurrently with itself: only Loop calls it, and a second Loop call made while
//     one is active returns at once.
//  2. At least minInterval passes between the end of one run and the start of the next (the
//     cooldown). A Run() during the cooldown is remembered and served as soon as it ends.
//  3. Any number of Run() calls during a run or a cooldown collapse into exactly one further run.
//     Run() never blocks; at most one request is pending. A request made while Loop is not running
//     stays pending and is served as soon as Loop starts.
//  4. If fn fails, it runs again retryInterval (capped at maxInterval) after the failed run ended,
//     even without a Run() call. After a successful run it runs again maxInterval after it ended
//     (the periodic full resync). Any run, whatever triggered it, reschedules this deadline. Both
//     respect the cooldown.
//  5. Loop returns promptly once its context is done, also during the cooldown (a run in progress
//     is not interrupted; Loop returns when it finishes). A panic in fn is recovered, logged with
//     its stack and handled like an error (retry); it does not stop the loop.
//  6. The first run happens on the first Run() or maxInterval after Loop started, whichever is
//     first: callers trigger the initial sync themselves.
type Runner struct {
	name          string
	fn            func() error
	minInterval   time.Duration
	retryInterval time.Duration
	maxInterval   time.Duration
	clock         clock.Clock

	// requests holds at most one pending Run() request.
	requests chan struct{}
	// looping is true while a Loop call is active.
	looping atomic.Bool
	// blockedHook, when set (by tests, before Loop starts), is called with the phase just before
	// Loop blocks. In phaseIdle it is only called when no request and no deadline were ready.
	blockedHook func(phase string)
}

// New returns a Runner for fn named name (used in log lines). minInterval is the cooldown after
// each run (0 disables it), retryInterval the delay before re-running a failed fn, maxInterval the
// longest time between runs. It fails if fn is nil, minInterval is negative, retryInterval or
// maxInterval is not positive, or maxInterval < minInterval. A nil clk means the real clock.
func New(name string, fn func() error, minInterval, retryInterval, maxInterval time.Duration, clk clock.Clock) (*Runner, error) {
	switch {
	case fn == nil:
		return nil, fmt.Errorf("creating runner %q: nil function", name)
	case minInterval < 0:
		return nil, fmt.Errorf("creating runner %q: minInterval %v is negative", name, minInterval)
	case retryInterval <= 0:
		return nil, fmt.Errorf("creating runner %q: retryInterval %v must be positive", name, retryInterval)
	case maxInterval <= 0:
		return nil, fmt.Errorf("creating runner %q: maxInterval %v must be positive", name, maxInterval)
	case maxInterval < minInterval:
		return nil, fmt.Errorf("creating runner %q: maxInterval %v is shorter than minInterval %v", name, maxInterval, minInterval)
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Runner{
		name:          name,
		fn:            fn,
		minInterval:   minInterval,
		retryInterval: retryInterval,
		maxInterval:   maxInterval,
		clock:         clk,
		requests:      make(chan struct{}, 1),
	}, nil
}

// Run asks for a run of fn as soon as the cooldown allows. It never blocks; requests made before
// the requested run starts are coalesced into it.
func (r *Runner) Run() {
	select {
	case r.requests <- struct{}{}:
	default: // a request is already pending
	}
}

// Loop runs fn as described on Runner until ctx is done. Call it once, typically in its own
// goroutine; a concurrent second call logs an error and returns immediately.
func (r *Runner) Loop(ctx context.Context) {
	if !r.looping.CompareAndSwap(false, true) {
		klog.ErrorS(nil, "Runner loop is already active; ignoring the second Loop call", "runner", r.name)
		return
	}
	defer r.looping.Store(false)
	klog.V(3).InfoS("Runner loop starting", "runner", r.name)
	defer klog.V(3).InfoS("Runner loop stopped", "runner", r.name)

	deadline := r.clock.NewTimer(r.maxInterval)
	defer func() { deadline.Stop() }() // a closure: deadline is replaced after every run
	for {
		trigger, ok := r.awaitTrigger(ctx, deadline)
		if !ok {
			return
		}
		deadline.Stop()
		// This run covers every request made so far, including one that raced with the deadline.
		r.dropPendingRequest()
		klog.V(4).InfoS("Running", "runner", r.name, "trigger", trigger)
		next := r.runOnce()
		deadline = r.clock.NewTimer(next)
		if !r.cooldown(ctx) {
			return
		}
	}
}

// awaitTrigger waits for a Run() request or for deadline to fire and says which one it was; ok is
// false when ctx is done first.
func (r *Runner) awaitTrigger(ctx context.Context, deadline clock.Timer) (trigger string, ok bool) {
	if ctx.Err() != nil {
		return "", false
	}
	select { // first without blocking, so the idle hook only reports a real wait
	case <-r.requests:
		return "request", true
	case <-deadline.C():
		return "deadline", true
	default:
	}
	r.notifyBlocked(phaseIdle)
	select {
	case <-ctx.Done():
		return "", false
	case <-r.requests:
		return "request", true
	case <-deadline.C():
		return "deadline", true
	}
}

// dropPendingRequest discards a pending Run() request, if any.
func (r *Runner) dropPendingRequest() {
	select {
	case <-r.requests:
	default:
	}
}

// cooldown waits for minInterval to pass; it returns false when ctx is done first.
func (r *Runner) cooldown(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	if r.minInterval == 0 {
		return true
	}
	timer := r.clock.NewTimer(r.minInterval)
	defer timer.Stop()
	r.notifyBlocked(phaseCooldown)
	select {
	case <-ctx.Done():
		return false
	case <-timer.C():
		return true
	}
}

// runOnce calls fn and returns how long to wait before the next unrequested run.
func (r *Runner) runOnce() time.Duration {
	err := r.callFn()
	if err == nil {
		return r.maxInterval
	}
	next := min(r.retryInterval, r.maxInterval)
	if pe := (*panicError)(nil); errors.As(err, &pe) {
		klog.ErrorS(err, "Run panicked; will retry", "runner", r.name, "retryIn", next, "stack", string(pe.stack))
	} else {
		klog.ErrorS(err, "Run failed; will retry", "runner", r.name, "retryIn", next)
	}
	return next
}

// callFn calls fn, turning a panic into a *panicError.
func (r *Runner) callFn() (err error) {
	defer func() {
		if value := recover(); value != nil {
			err = &panicError{value: value, stack: debug.Stack()}
		}
	}()
	return r.fn()
}

// notifyBlocked calls the test hook, if any.
func (r *Runner) notifyBlocked(phase string) {
	if r.blockedHook != nil {
		r.blockedHook(phase)
	}
}

// panicError is the error a recovered panic in fn becomes.
type panicError struct {
	value any
	stack []byte
}

// Error describes the recovered panic value.
func (e *panicError) Error() string {
	return fmt.Sprintf("panic: %v", e.value)
}
