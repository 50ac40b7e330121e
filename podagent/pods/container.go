package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/podagent/probe"
	"github.com/nodeproxy/nodeproxy/podagent/status"
)

// validatePod returns the first reason the agent cannot run pod.
func validatePod(pod *v1.Pod) error {
	if len(pod.Spec.Containers) == 0 {
		return errors.New("pod has no containers")
	}
	if len(pod.Spec.InitContainers) > 0 {
		return errors.New("init containers are not supported")
	}
	for i := range pod.Spec.Containers {
		if err := validateContainer(&pod.Spec.Containers[i]); err != nil {
			return fmt.Errorf("container %q: %w", pod.Spec.Containers[i].Name, err)
		}
	}
	return nil
}

func validateContainer(c *v1.Container) error {
	if len(c.Command) == 0 {
		return errors.New("command is required (the image is ignored; the command is a host binary)")
	}
	if _, err := exec.LookPath(c.Command[0]); err != nil {
		return fmt.Errorf("resolving command: %w", err)
	}
	for _, p := range c.Ports {
		if p.ContainerPort < 1 || p.ContainerPort > 65535 {
			return fmt.Errorf("port %q: containerPort %d out of range 1-65535", p.Name, p.ContainerPort)
		}
	}
	for i, p := range []*v1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
		if p == nil {
			continue
		}
		if _, err := probe.NewRunner(p, c, "", nil); err != nil {
			return fmt.Errorf("%s probe: %w", []string{"startup", "readiness", "liveness"}[i], err)
		}
	}
	return nil
}

// downwardAPI maps the supported downward API field paths to their values.
func downwardAPI(pod *v1.Pod, podIPs, hostIPs []string) map[string]string {
	return map[string]string{
		"metadata.name": pod.Name, "metadata.namespace": pod.Namespace, "metadata.uid": string(pod.UID),
		"spec.nodeName": pod.Spec.NodeName, "spec.serviceAccountName": pod.Spec.ServiceAccountName,
		"status.podIP": podIPs[0], "status.podIPs": strings.Join(podIPs, ","),
		"status.hostIP": hostIPs[0], "status.hostIPs": strings.Join(hostIPs, ","),
	}
}

// container runs one container of a pod: its process, restarts and probes.
type container struct {
	pod   *podRun
	spec  *v1.Container
	proc  ProcessSpec
	podIP string           // where HTTP and TCP probes go
	st    status.Container // guarded by pod.mu
}

// newContainer prepares spec's command, log file and environment: the agent's own (with
// markers such as the test harness's), HOSTNAME, SandboxEnv, then spec's env.
func newContainer(p *podRun, pod *v1.Pod, spec *v1.Container, podIP string, fields map[string]string) *container {
	env := append(os.Environ(), "HOSTNAME="+pod.Name, SandboxEnv+"="+p.sandbox)
	var skipped []string
	for _, e := range spec.Env {
		value, ok := e.Value, e.ValueFrom == nil
		if !ok && e.ValueFrom.FieldRef != nil {
			value, ok = fields[e.ValueFrom.FieldRef.FieldPath]
		}
		if !ok {
			skipped = append(skipped, e.Name)
			continue
		}
		env = append(env, e.Name+"="+value)
	}
	if len(skipped) > 0 {
		p.m.event(pod, v1.EventTypeWarning, "UnsupportedEnv", fmt.Sprintf("container %s: skipped env %v (only values and "+
			"fieldRef of pod name, namespace, uid, node name, service account, pod and host IPs are supported)", spec.Name, skipped))
	}
	path, _ := exec.LookPath(spec.Command[0]) // validatePod resolved it
	c := &container{pod: p, spec: spec, podIP: podIP, st: status.Container{Name: spec.Name, State: v1.ContainerState{
		Waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"},
	}}}
	c.proc = ProcessSpec{Argv: append(append([]string{path}, spec.Command[1:]...), spec.Args...), Env: env, Dir: spec.WorkingDir}
	if !pod.Spec.HostNetwork {
		c.proc.Sandbox = p.sandbox
	}
	if p.m.cfg.LogDir != "" {
		c.proc.LogPath = filepath.Join(p.m.cfg.LogDir, fmt.Sprintf("%s_%s_%s.log", pod.Namespace, pod.Name, spec.Name))
	}
	return c
}

// run starts the container and restarts it by the pod's policy until ctx ends; hurry
// closes when the agent stops, cutting grace periods short.
func (c *container) run(ctx context.Context, hurry <-chan struct{}) {
	for {
		code, probeKilled := c.runOnce(ctx, hurry)
		// Always restarts, OnFailure after a non-zero exit or a failed liveness or startup probe.
		policy := c.pod.current().Spec.RestartPolicy
		if ctx.Err() != nil || policy == v1.RestartPolicyNever || (policy == v1.RestartPolicyOnFailure && code == 0 && !probeKilled) {
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

// runOnce runs one instance of the container until it exits, a probe kills it or ctx
// ends, and returns its exit code and whether a probe had it killed.
func (c *container) runOnce(ctx context.Context, hurry <-chan struct{}) (int, bool) {
	m := c.pod.m
	startedAt := metav1.NewTime(m.cfg.Clock.Now())
	proc, err := m.cfg.Runtime.Start(c.proc)
	if err != nil {
		msg := fmt.Sprintf("starting %s: %v", c.proc.Argv[0], err)
		m.event(c.pod.current(), v1.EventTypeWarning, "Failed", msg)
		c.pod.update(func() { c.st.State = terminated(128, "StartError", msg, startedAt, startedAt) })
		return 128, false
	}
	hasStartup := c.spec.StartupProbe != nil
	c.pod.update(func() {
		c.st.ID = fmt.Sprintf("podagent://%s/%s/%d", c.pod.sandbox, c.spec.Name, c.st.RestartCount)
		c.st.State = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: startedAt}}
		c.st.Started = !hasStartup
		c.st.Ready = !hasStartup && c.spec.ReadinessProbe == nil
	})
	probeCtx, stopProbes := context.WithCancel(ctx)
	defer stopProbes()
	kill := make(chan string, 3)
	c.startProbes(probeCtx, startedAt.Time, kill)
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
	stopProbes() // before the update below, so late probe results are dropped
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	c.pod.update(func() {
		c.st.Ready = false
		c.st.State = terminated(int32(code), reason, "", startedAt, metav1.NewTime(m.cfg.Clock.Now()))
	})
	return code, probeKilled
}

func terminated(code int32, reason, msg string, started, finished metav1.Time) v1.ContainerState {
	return v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
		ExitCode: code, Reason: reason, Message: msg, StartedAt: started, FinishedAt: finished,
	}}
}

// stopProcess sends SIGTERM, then SIGKILL after grace or once hurry closes, and returns the exit code.
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

// startProbes starts the startup probe, then the readiness and liveness probes. Results
// count until ctx ends; failed liveness and startup probes send on kill.
func (c *container) startProbes(ctx context.Context, startedAt time.Time, kill chan<- string) {
	ifCurrent := func(fn func()) {
		c.pod.update(func() {
			if ctx.Err() == nil {
				fn()
			}
		})
	}
	var spawn func(kind probe.Kind, p *v1.Probe)
	onChange := func(kind probe.Kind, r probe.Result, msg string) {
		if r != probe.Success {
			c.pod.m.event(c.pod.current(), v1.EventTypeWarning, "Unhealthy", fmt.Sprintf("%s probe failed: %s", kind, msg))
		}
		switch {
		case kind == probe.Readiness:
			ifCurrent(func() { c.st.Ready = r == probe.Success })
		case r != probe.Success:
			trySend(kill, fmt.Sprintf("Container %s failed %s probe", c.spec.Name, kind))
		case kind == probe.Startup:
			ifCurrent(func() { c.st.Started, c.st.Ready = true, c.spec.ReadinessProbe == nil })
			spawn(probe.Readiness, c.spec.ReadinessProbe)
			spawn(probe.Liveness, c.spec.LivenessProbe)
		}
	}
	spawn = func(kind probe.Kind, p *v1.Probe) {
		if p == nil {
			return
		}
		runner, err := probe.NewRunner(p, c.spec, c.podIP, c.exec)
		if err != nil { // validatePod has checked this already
			klog.ErrorS(err, "Skipping probe", "pod", klog.KObj(c.pod.current()), "container", c.spec.Name, "kind", kind)
			return
		}
		w := &probe.Worker{Kind: kind, Timing: probe.TimingOf(p), Runner: runner, Clock: c.pod.m.cfg.Clock,
			OnChange: func(r probe.Result, msg string) { onChange(kind, r, msg) }}
		go w.Run(ctx, startedAt)
	}
	if c.spec.StartupProbe != nil {
		spawn(probe.Startup, c.spec.StartupProbe)
		return
	}
	spawn(probe.Readiness, c.spec.ReadinessProbe)
	spawn(probe.Liveness, c.spec.LivenessProbe)
}

// exec runs an exec probe's command in the container's sandbox with its environment.
func (c *container) exec(ctx context.Context, argv []string) (int, string, error) {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return -1, "", fmt.Errorf("resolving probe command: %w", err)
	}
	spec := c.proc
	spec.Argv, spec.LogPath = append([]string{path}, argv[1:]...), ""
	return c.pod.m.cfg.Runtime.Exec(ctx, spec)
}
