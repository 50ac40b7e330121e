package probe

import (
	"context"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
)

// Kind is which of a container's probes a worker runs.
type Kind string

// The three probe kinds.
const (
	Startup   Kind = "Startup"
	Readiness Kind = "Readiness"
	Liveness  Kind = "Liveness"
)

// InitialResult is the state a probe of this kind reports before its first verdict:
// a container is not ready until its readiness probe passes, alive until its liveness
// probe fails, and not started until its startup probe passes.
func (k Kind) InitialResult() Result {
	switch k {
	case Readiness:
		return Failure
	case Liveness:
		return Success
	}
	return Unknown
}

// Timing is a probe's schedule and thresholds with the API defaults applied.
type Timing struct {
	InitialDelay     time.Duration
	Period           time.Duration
	Timeout          time.Duration
	SuccessThreshold int
	FailureThreshold int
}

// TimingOf reads p's timing fields, using the API defaults for zero values (period 10 s,
// timeout 1 s, success threshold 1, failure threshold 3).
func TimingOf(p *v1.Probe) Timing {
	orDefault := func(v, def int32) int32 {
		if v <= 0 {
			return def
		}
		return v
	}
	return Timing{
		InitialDelay:     time.Duration(max(p.InitialDelaySeconds, 0)) * time.Second,
		Period:           time.Duration(orDefault(p.PeriodSeconds, 10)) * time.Second,
		Timeout:          time.Duration(orDefault(p.TimeoutSeconds, 1)) * time.Second,
		SuccessThreshold: int(orDefault(p.SuccessThreshold, 1)),
		FailureThreshold: int(orDefault(p.FailureThreshold, 3)),
	}
}

// Tracker applies the success and failure thresholds to a stream of attempt results:
// the reported result changes only after that many consecutive equal results.
type Tracker struct {
	// Current is the reported result.
	Current Result
	timing  Timing
	last    Result
	run     int
}

// NewTracker returns a tracker reporting kind's initial result.
func NewTracker(kind Kind, timing Timing) *Tracker {
	return &Tracker{Current: kind.InitialResult(), timing: timing}
}

// Observe records one attempt's result and reports whether it reached its threshold,
// in which case Current is now r.
func (t *Tracker) Observe(r Result) bool {
	if r == t.last {
		t.run++
	} else {
		t.last, t.run = r, 1
	}
	if (r == Failure && t.run < t.timing.FailureThreshold) || (r == Success && t.run < t.timing.SuccessThreshold) {
		return false
	}
	t.Current = r
	return true
}

// Worker probes one container instance on its probe's schedule.
type Worker struct {
	Kind   Kind
	Timing Timing
	Runner Runner
	Clock  clock.WithTicker
	// OnChange is called when the reported result changes, with the last attempt's message.
	OnChange func(r Result, message string)
}

// Run probes from startedAt+InitialDelay every Period until ctx ends, a startup probe
// reaches a verdict or a liveness probe fails (the container is then restarted and gets
// a new worker).
func (w *Worker) Run(ctx context.Context, startedAt time.Time) {
	if delay := startedAt.Add(w.Timing.InitialDelay).Sub(w.Clock.Now()); delay > 0 {
		select {
		case <-ctx.Done():
			return
		case <-w.Clock.After(delay):
		}
	}
	ticker := w.Clock.NewTicker(w.Timing.Period)
	defer ticker.Stop()
	tracker := NewTracker(w.Kind, w.Timing)
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, w.Timing.Timeout)
		result, msg := w.Runner.Probe(attemptCtx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		before := tracker.Current
		if tracker.Observe(result) {
			if tracker.Current != before {
				w.OnChange(result, msg)
			}
			if w.Kind == Startup || (w.Kind == Liveness && result == Failure) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
	}
}
