package pods

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/podagent/probe"
	"github.com/nodeproxy/nodeproxy/podagent/status"
)

// container runs one container of a pod: its process, restarts and probes.
type container struct {
	pod  *podRun
	spec *v1.Container
	proc ProcessSpec
	// podIP is where HTTP and TCP probes go.
	podIP string

	// Guarded by pod.mu.
	st         status.Container
	generation int
}

// newContainer prepares container spec of the pod: its command (resolved on PATH, then
// args), environment and log file.
func newContainer(p *podRun, spec *v1.Container, facts podFacts) *container {
	env, skipped := containerEnv(spec, facts)
	if len(skipped) > 0 {
		p.m.event(facts.pod, v1.EventTypeWarning, "UnsupportedEnv", fmt.Sprintf("container %s: skipped env %v (only values and "+
			"fieldRef of pod name, namespace, uid, node name, service account, pod and host IPs are supported)", spec.Name, skipped))
	}
	path, _ := exec.LookPath(spec.Command[0]) // validatePod resolved it
	c := &container{pod: p, spec: spec, podIP: facts.podIPs[0], st: status.Container{Name: spec.Name}}
	c.proc = ProcessSpec{Argv: append(append([]string{path}, spec.Command[1:]...), spec.Args...), Env: env, Dir: spec.WorkingDir}
	if !facts.pod.Spec.HostNetwork {
		c.proc.Sandbox = p.sandbox
	}
	if p.m.cfg.LogDir != "" {
		c.proc.LogPath = filepath.Join(p.m.cfg.LogDir, fmt.Sprintf("%s_%s_%s.log", facts.pod.Namespace, facts.pod.Name, spec.Name))
	}
	c.st.State = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"}}
	return c
}

// run starts the container and restarts it by the pod's policy until ctx ends; hurry
// closes when the agent stops, cutting grace periods short.
func (c *container) run(ctx context.Context, hurry <-chan struct{}) {
	for {
		code, probeKilled := c.runOnce(ctx, hurry)
		if ctx.Err() != nil || !shouldRestart(c.pod.current().Spec.RestartPolicy, code, probeKilled) {
			return
		}
		var delay time.Duration
		c.pod.update(func() {
			delay = c.pod.m.backoff(c.st.RestartCount)
			c.st.LastState, c.st.State = c.st.State, v1.ContainerState{Waiting: &v1.ContainerStateWaiting{
				Reason: "CrashLoopBackOff", Message: fmt.Sprintf("back-off %s restarting container %s", delay, c.spec.Name),
			}}
		})
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		c.pod.update(func() { c.st.RestartCount++ })
	}
}

// shouldRestart applies the restart policy to an exit: Always restarts, OnFailure on
// a non-zero exit or a failed liveness or startup probe, Never does not.
func shouldRestart(policy v1.RestartPolicy, exitCode int, probeKilled bool) bool {
	switch policy {
	case v1.RestartPolicyNever:
		return false
	case v1.RestartPolicyOnFailure:
		return exitCode != 0 || probeKilled
	}
	return true
}

// runOnce runs one instance of the container until it exits, a probe kills it or ctx
// ends, and returns its exit code and whether a probe had it killed.
func (c *container) runOnce(ctx context.Context, hurry <-chan struct{}) (int, bool) {
	m := c.pod.m
	startedAt := metav1.NewTime(m.clock.Now())
	proc, err := m.cfg.Runtime.Start(c.proc)
	if err != nil {
		msg := fmt.Sprintf("starting %s: %v", c.proc.Argv[0], err)
		m.event(c.pod.current(), v1.EventTypeWarning, "Failed", msg)
		c.pod.update(func() {
			c.generation++
			c.st.State = terminated(128, "StartError", msg, startedAt, startedAt)
		})
		return 128, false
	}
	var generation int
	hasStartup := c.spec.StartupProbe != nil
	c.pod.update(func() {
		c.generation++
		generation = c.generation
		c.st.ID = fmt.Sprintf("podagent://%s/%s/%d", c.pod.sandbox, c.spec.Name, c.st.RestartCount)
		c.st.State = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: startedAt}}
		c.st.Started = !hasStartup
		c.st.Ready = !hasStartup && c.spec.ReadinessProbe == nil
	})
	probeCtx, stopProbes := context.WithCancel(ctx)
	defer stopProbes()
	kill := make(chan string, 3)
	c.startProbes(probeCtx, generation, startedAt.Time, kill)
	exited := make(chan int, 1)
	go func() { exited <- proc.Wait() }()

	code, probeKilled := 0, false
	select {
	case code = <-exited:
	case msg := <-kill:
		stopProbes()
		probeKilled = true
		m.event(c.pod.current(), v1.EventTypeNormal, "Killing", msg+", will be restarted by policy")
		code = stopProcess(proc, exited, c.pod.grace(), hurry)
	case <-ctx.Done():
		code = stopProcess(proc, exited, c.pod.grace(), hurry)
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	c.pod.update(func() {
		c.generation++
		c.st.Ready = false
		c.st.State = terminated(int32(code), reason, "", startedAt, metav1.NewTime(m.clock.Now()))
	})
	return code, probeKilled
}

func terminated(code int32, reason, msg string, started, finished metav1.Time) v1.ContainerState {
	return v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
		ExitCode: code, Reason: reason, Message: msg, StartedAt: started, FinishedAt: finished,
	}}
}

// stopProcess sends SIGTERM, waits up to grace (or until hurry closes), then sends
// SIGKILL, and returns the exit code.
func stopProcess(proc Process, exited <-chan int, grace time.Duration, hurry <-chan struct{}) int {
	_ = proc.Signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case code := <-exited:
		return code
	case <-timer.C:
	case <-hurry:
	}
	_ = proc.Signal(syscall.SIGKILL)
	return <-exited
}

// startProbes starts the startup probe, and the readiness and liveness probes once the
// container has started. Probe results change the container's state only while
// instance generation is still the current one; failed liveness and startup probes
// send a reason on kill.
func (c *container) startProbes(ctx context.Context, generation int, startedAt time.Time, kill chan<- string) {
	ifCurrent := func(fn func()) {
		c.pod.update(func() {
			if c.generation == generation {
				fn()
			}
		})
	}
	killFor := func(kind probe.Kind, msg string) {
		c.pod.m.event(c.pod.current(), v1.EventTypeWarning, "Unhealthy", fmt.Sprintf("%s probe failed: %s", kind, msg))
		select {
		case kill <- fmt.Sprintf("Container %s failed %s probe", c.spec.Name, kind):
		default:
		}
	}
	startOthers := func() {
		c.spawnProbe(ctx, probe.Readiness, c.spec.ReadinessProbe, startedAt, func(r probe.Result, msg string) {
			if r == probe.Failure {
				c.pod.m.event(c.pod.current(), v1.EventTypeWarning, "Unhealthy", "Readiness probe failed: "+msg)
			}
			ifCurrent(func() { c.st.Ready = r == probe.Success })
		})
		c.spawnProbe(ctx, probe.Liveness, c.spec.LivenessProbe, startedAt, func(r probe.Result, msg string) {
			if r == probe.Failure {
				killFor(probe.Liveness, msg)
			}
		})
	}
	if c.spec.StartupProbe == nil {
		startOthers()
		return
	}
	c.spawnProbe(ctx, probe.Startup, c.spec.StartupProbe, startedAt, func(r probe.Result, msg string) {
		if r != probe.Success {
			killFor(probe.Startup, msg)
			return
		}
		ifCurrent(func() {
			c.st.Started = true
			c.st.Ready = c.spec.ReadinessProbe == nil
		})
		startOthers()
	})
}

func (c *container) spawnProbe(ctx context.Context, kind probe.Kind, p *v1.Probe, startedAt time.Time, onChange func(probe.Result, string)) {
	if p == nil {
		return
	}
	runner, err := probe.NewRunner(p, c.spec, c.podIP, c.exec)
	if err != nil { // validatePod has checked this already
		klog.ErrorS(err, "Skipping probe", "pod", klog.KObj(c.pod.current()), "container", c.spec.Name, "kind", kind)
		return
	}
	w := &probe.Worker{Kind: kind, Timing: probe.TimingOf(p), Runner: runner, Clock: c.pod.m.clock, OnChange: onChange}
	go w.Run(ctx, startedAt)
}

// exec runs an exec probe's command in the container's sandbox with its environment.
func (c *container) exec(ctx context.Context, argv []string) (int, string, error) {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return -1, "", fmt.Errorf("resolving probe command: %w", err)
	}
	spec := c.proc
	spec.Argv = append([]string{path}, argv[1:]...)
	spec.LogPath = ""
	return c.pod.m.cfg.Runtime.Exec(ctx, spec)
}
