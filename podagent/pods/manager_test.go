package pods

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8stesting "k8s.io/client-go/testing"
)

func TestPodGetsSandboxProcessAndReadyStatus(t *testing.T) {
	c := sleeper("main")
	c.Env = []v1.EnvVar{
		{Name: "PLAIN", Value: "v"},
		{Name: "POD_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_IP", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "SECRET", ValueFrom: &v1.EnvVarSource{SecretKeyRef: &v1.SecretKeySelector{Key: "k"}}},
	}
	other := newPod("elsewhere", sleeper("main"))
	other.Spec.NodeName = "n2"
	h := newHarness(t, newPod("web", c), other)

	p := h.waitPod("web", "Ready", isReady)
	sandbox := SandboxName(testNode, p.UID)
	addrs, ok := h.rt.sandbox(sandbox)
	if !ok || len(addrs) != 1 || addrs[0].String() != p.Status.PodIP+"/24" {
		t.Fatalf("sandbox %s: %v %v, pod IP %s", sandbox, ok, addrs, p.Status.PodIP)
	}
	if !netip.MustParsePrefix("10.244.1.0/24").Contains(addrs[0].Addr()) || p.Status.HostIP != "192.168.0.2" || p.Status.Phase != v1.PodRunning {
		t.Errorf("status %+v", p.Status)
	}
	cs := p.Status.ContainerStatuses[0]
	if cs.State.Running == nil || !cs.Ready || !*cs.Started || cs.RestartCount != 0 {
		t.Errorf("container status %+v", cs)
	}
	procs := h.rt.processes()
	if len(procs) != 1 {
		t.Fatalf("%d processes started, want 1 (the other node's pod must be ignored)", len(procs))
	}
	spec := procs[0].spec
	if spec.Sandbox != sandbox || !strings.HasSuffix(spec.Argv[0], "/sleep") || spec.Argv[1] != "1000" {
		t.Errorf("process spec %+v", spec)
	}
	for _, kv := range []string{"PLAIN=v", "POD_NAME=web", "POD_IP=" + p.Status.PodIP, SandboxEnv + "=" + sandbox} {
		if !slices.Contains(spec.Env, kv) {
			t.Errorf("env %v lacks %s", spec.Env, kv)
		}
	}
	if !h.hasEvent("web Warning UnsupportedEnv", "SECRET") {
		t.Errorf("no UnsupportedEnv event naming SECRET in %v", h.events())
	}
}

func execProbe(failureThreshold int32) *v1.Probe {
	return &v1.Probe{
		ProbeHandler:  v1.ProbeHandler{Exec: &v1.ExecAction{Command: []string{"true"}}},
		PeriodSeconds: 1, FailureThreshold: failureThreshold,
	}
}

func TestReadinessProbeGatesReady(t *testing.T) {
	c := sleeper("main")
	c.ReadinessProbe = execProbe(1)
	h := prepareHarness(t, newPod("web", c))
	h.rt.execCode.Store(1)
	h.start()
	p := h.waitPod("web", "running", func(p *v1.Pod) bool { return p.Status.Phase == v1.PodRunning })
	time.Sleep(100 * time.Millisecond) // many probe periods on the fast clock
	if p, _ = h.pod("web"); isReady(p) || p.Status.ContainerStatuses[0].Ready {
		t.Fatal("pod ready while its readiness probe fails")
	}
	h.rt.execCode.Store(0)
	h.waitPod("web", "Ready after the probe passes", isReady)
	h.rt.execCode.Store(1)
	h.waitPod("web", "not Ready after the probe fails again", func(p *v1.Pod) bool { return !isReady(p) })
	if !h.hasEvent("Unhealthy", "Readiness probe failed") {
		t.Errorf("no Unhealthy event in %v", h.events())
	}
}

func TestStartupProbeHoldsOtherProbes(t *testing.T) {
	c := sleeper("main")
	c.StartupProbe = execProbe(1000)
	c.LivenessProbe = execProbe(1)
	h := prepareHarness(t, newPod("web", c))
	h.rt.execCode.Store(1)
	h.start()
	p := h.waitPod("web", "running", func(p *v1.Pod) bool { return p.Status.Phase == v1.PodRunning })
	time.Sleep(100 * time.Millisecond)
	if p, _ = h.pod("web"); *p.Status.ContainerStatuses[0].Started || isReady(p) || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Fatalf("before the startup probe passes: %+v (liveness must not run yet)", p.Status.ContainerStatuses[0])
	}
	h.rt.execCode.Store(0)
	h.waitPod("web", "started and ready", isReady)
}

func TestLivenessFailureRestartsContainer(t *testing.T) {
	c := sleeper("main")
	c.LivenessProbe = execProbe(2)
	h := prepareHarness(t, newPod("web", c))
	h.rt.execCode.Store(1)
	h.start()
	p := h.waitPod("web", "a restart", func(p *v1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1
	})
	last := p.Status.ContainerStatuses[0].LastTerminationState.Terminated
	if last == nil || last.ExitCode != 128+int32(syscall.SIGTERM) {
		t.Errorf("last state %+v, want terminated by SIGTERM", p.Status.ContainerStatuses[0].LastTerminationState)
	}
	if got := h.rt.processes()[0].received(); len(got) == 0 || got[0] != syscall.SIGTERM {
		t.Errorf("first process got signals %v, want SIGTERM", got)
	}
	if !h.hasEvent("Normal Killing", "failed Liveness probe") || !h.hasEvent("Warning Unhealthy", "Liveness probe failed") {
		t.Errorf("events %v", h.events())
	}
}

func TestExitRestartsByPolicy(t *testing.T) {
	cases := []struct {
		policy    v1.RestartPolicy
		exitCode  int
		restarts  bool
		wantPhase v1.PodPhase
	}{
		{v1.RestartPolicyAlways, 0, true, v1.PodRunning},
		{v1.RestartPolicyOnFailure, 1, true, v1.PodRunning},
		{v1.RestartPolicyOnFailure, 0, false, v1.PodSucceeded},
		{v1.RestartPolicyNever, 1, false, v1.PodFailed},
	}
	for _, tc := range cases {
		t.Run(string(tc.policy), func(t *testing.T) {
			pod := newPod("web", sleeper("main"))
			pod.Spec.RestartPolicy = tc.policy
			h := newHarness(t, pod)
			waitFor(t, "process start", func() bool { return len(h.rt.processes()) == 1 })
			h.rt.processes()[0].exitWith(tc.exitCode)
			if tc.restarts {
				p := h.waitPod("web", "restart", func(p *v1.Pod) bool {
					return p.Status.ContainerStatuses[0].RestartCount == 1 && p.Status.ContainerStatuses[0].State.Running != nil
				})
				if last := p.Status.ContainerStatuses[0].LastTerminationState.Terminated; last == nil || int(last.ExitCode) != tc.exitCode {
					t.Errorf("last state %+v", p.Status.ContainerStatuses[0].LastTerminationState)
				}
				if len(h.rt.processes()) != 2 {
					t.Errorf("%d processes, want 2", len(h.rt.processes()))
				}
			}
			p := h.waitPod("web", string(tc.wantPhase), func(p *v1.Pod) bool { return p.Status.Phase == tc.wantPhase })
			if !tc.restarts {
				time.Sleep(50 * time.Millisecond) // several backoff periods
				if n := len(h.rt.processes()); n != 1 || p.Status.ContainerStatuses[0].State.Terminated == nil {
					t.Errorf("%d processes, state %+v: want no restart", n, p.Status.ContainerStatuses[0].State)
				}
			}
		})
	}
}

func TestGracefulDeletion(t *testing.T) {
	pod := newPod("web", sleeper("main"))
	grace := int64(1)
	pod.Spec.TerminationGracePeriodSeconds = &grace
	h := prepareHarness(t, pod)
	h.rt.ignoreTerm.Store(true)
	h.start()
	p := h.waitPod("web", "Ready", isReady)
	sandbox := SandboxName(testNode, p.UID)

	now := metav1.Now()
	p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &now, &grace
	if _, err := h.client.CoreV1().Pods("default").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod deleted from the API", func() bool { _, err := h.pod("web"); return apierrors.IsNotFound(err) })

	if got := h.rt.processes()[0].received(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}) {
		t.Errorf("signals %v, want SIGTERM then SIGKILL (the process ignores SIGTERM)", got)
	}
	if _, ok := h.rt.sandbox(sandbox); ok {
		t.Error("sandbox not removed")
	}
	// The last status written before the delete says not ready; the delete has grace period 0.
	var lastStatus *v1.Pod
	for _, a := range h.client.Actions() {
		switch a := a.(type) {
		case k8stesting.PatchAction:
			if a.GetSubresource() == "status" {
				lastStatus = &v1.Pod{}
				lastStatus.Status = patchedStatus(t, a.GetPatch())
			}
		case k8stesting.DeleteAction:
			if a.GetResource().Resource != "pods" {
				continue
			}
			opts := a.GetDeleteOptions()
			if opts.GracePeriodSeconds == nil || *opts.GracePeriodSeconds != 0 || opts.Preconditions == nil || *opts.Preconditions.UID != p.UID {
				t.Errorf("delete options %+v", opts)
			}
			if lastStatus == nil || isReady(lastStatus) {
				t.Error("pod not marked not-ready before deletion")
			}
		}
	}
}

func TestPodGoneFromAPIStopsAtOnce(t *testing.T) {
	h := prepareHarness(t, newPod("web", sleeper("main")))
	h.rt.ignoreTerm.Store(true)
	h.start()
	p := h.waitPod("web", "Ready", isReady)
	if err := h.client.CoreV1().Pods("default").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sandbox removal", func() bool { _, ok := h.rt.sandbox(SandboxName(testNode, p.UID)); return !ok })
	if got := h.rt.processes()[0].received(); !slices.Contains(got, syscall.SIGKILL) {
		t.Errorf("signals %v, want SIGKILL after a zero grace period", got)
	}
}

func TestInvalidSpecsAreReportedNotRun(t *testing.T) {
	noCommand := sleeper("main")
	noCommand.Command = nil
	notFound := sleeper("main")
	notFound.Command = []string{"no-such-binary-podagent"}
	badPort := sleeper("main")
	badPort.Ports = []v1.ContainerPort{{Name: "p", ContainerPort: 70000}}
	noHandler := sleeper("main")
	noHandler.ReadinessProbe = &v1.Probe{}
	unknownPort := sleeper("main")
	unknownPort.LivenessProbe = &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Port: intstr.FromString("web")}}}
	bad := map[string]struct {
		c    v1.Container
		want string
	}{
		"no-command":   {noCommand, "command is required"},
		"not-found":    {notFound, "no-such-binary-podagent"},
		"bad-port":     {badPort, "out of range"},
		"no-handler":   {noHandler, "readiness probe: probe has no handler"},
		"unknown-port": {unknownPort, `unknown named port "web"`},
	}
	pods := []*v1.Pod{newPod("good", sleeper("main"))}
	for name, b := range bad {
		pods = append(pods, newPod(name, b.c))
	}
	h := newHarness(t, pods...)
	for name, b := range bad {
		p := h.waitPod(name, "InvalidSpec status", func(p *v1.Pod) bool {
			return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Waiting != nil &&
				p.Status.ContainerStatuses[0].State.Waiting.Reason == "InvalidSpec"
		})
		if msg := p.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, b.want) || p.Status.Phase != v1.PodPending {
			t.Errorf("%s: phase %s, message %q, want one containing %q", name, p.Status.Phase, msg, b.want)
		}
		if !h.hasEvent(name+" Warning InvalidSpec", b.want) {
			t.Errorf("%s: no InvalidSpec event in %v", name, h.events())
		}
	}
	h.waitPod("good", "Ready next to the bad pods", isReady)
	if n := len(h.rt.processes()); n != 1 {
		t.Errorf("%d processes started, want only the good pod's", n)
	}
}

func TestAgentStopRemovesEverythingButKeepsPods(t *testing.T) {
	h := newHarness(t, newPod("a", sleeper("main")), newPod("b", sleeper("main")))
	h.waitPod("a", "Ready", isReady)
	h.waitPod("b", "Ready", isReady)
	h.stop()
	for _, p := range h.rt.processes() {
		if len(p.received()) == 0 {
			t.Errorf("process %v was not stopped", p.spec.Argv)
		}
	}
	if len(h.rt.sandboxes) != 0 || len(h.rt.removed) != 2 {
		t.Errorf("sandboxes left %v, removed %v", h.rt.sandboxes, h.rt.removed)
	}
	if _, err := h.pod("a"); err != nil {
		t.Errorf("pod deleted from the API on agent stop: %v", err)
	}
}
