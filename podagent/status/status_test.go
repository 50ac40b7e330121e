package status

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

var (
	t0      = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	running = v1.ContainerState{Running: &v1.ContainerStateRunning{}}
)

func exited(code int32) v1.ContainerState {
	return v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ExitCode: code}}
}

func testPod() *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "u1"},
		Spec:       v1.PodSpec{Containers: []v1.Container{{Name: "a", Image: "img"}, {Name: "b"}}},
	}
}

func conditions(st v1.PodStatus) map[v1.PodConditionType]v1.PodCondition {
	out := map[v1.PodConditionType]v1.PodCondition{}
	for _, c := range st.Conditions {
		out[c.Type] = c
	}
	return out
}

func TestComputeReadyNeedsAllContainersReady(t *testing.T) {
	s := Pod{
		HostIPs: []string{"192.168.0.2"}, PodIPs: []string{"10.244.1.2", "fd00::2"}, SandboxReady: true,
		Containers: []Container{{Name: "a", State: running, Ready: true, Started: true}, {Name: "b", State: running, Started: true}},
	}
	st := Compute(testPod(), s, v1.PodStatus{}, t0)
	if st.Phase != v1.PodRunning || st.PodIP != "10.244.1.2" || len(st.PodIPs) != 2 || st.PodIPs[1].IP != "fd00::2" || st.HostIP != "192.168.0.2" {
		t.Fatalf("phase/IPs wrong: %+v", st)
	}
	c := conditions(st)
	for _, ct := range []v1.PodConditionType{v1.PodScheduled, v1.PodInitialized, v1.PodReadyToStartContainers} {
		if c[ct].Status != v1.ConditionTrue {
			t.Errorf("%s = %s, want True", ct, c[ct].Status)
		}
	}
	if c[v1.PodReady].Status != v1.ConditionFalse || c[v1.ContainersReady].Message != "containers with unready status: [b]" {
		t.Errorf("Ready %+v / ContainersReady %+v, want False naming b", c[v1.PodReady], c[v1.ContainersReady])
	}
	if st.ContainerStatuses[0].Image != "img" || !st.ContainerStatuses[0].Ready || !*st.ContainerStatuses[0].Started {
		t.Errorf("container a status %+v", st.ContainerStatuses[0])
	}

	s.Containers[1].Ready = true
	later := Compute(testPod(), s, st, t0.Add(time.Minute))
	c2 := conditions(later)
	if c2[v1.PodReady].Status != v1.ConditionTrue || !c2[v1.PodReady].LastTransitionTime.Time.Equal(t0.Add(time.Minute)) {
		t.Errorf("Ready after both ready: %+v, want True since t0+1m", c2[v1.PodReady])
	}
	if !c2[v1.PodScheduled].LastTransitionTime.Time.Equal(t0) || !later.StartTime.Time.Equal(t0) {
		t.Error("unchanged condition or start time lost its original time")
	}

	s.Terminating = true
	term := Compute(testPod(), s, later, t0.Add(2*time.Minute))
	if conditions(term)[v1.PodReady].Status != v1.ConditionFalse || term.ContainerStatuses[0].Ready {
		t.Error("terminating pod must not be ready")
	}
}

func TestPhase(t *testing.T) {
	waiting := v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"}}
	backoff := v1.ContainerStatus{State: v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}, LastTerminationState: exited(1)}
	cs := func(states ...v1.ContainerState) []v1.ContainerStatus {
		var out []v1.ContainerStatus
		for _, s := range states {
			out = append(out, v1.ContainerStatus{State: s})
		}
		return out
	}
	cases := []struct {
		name     string
		policy   v1.RestartPolicy
		statuses []v1.ContainerStatus
		want     v1.PodPhase
	}{
		{"nothing yet", v1.RestartPolicyAlways, nil, v1.PodPending},
		{"one waiting", v1.RestartPolicyAlways, cs(running, waiting), v1.PodPending},
		{"running", v1.RestartPolicyNever, cs(running, exited(1)), v1.PodRunning},
		{"backing off", v1.RestartPolicyAlways, []v1.ContainerStatus{backoff}, v1.PodRunning},
		{"always, all exited", v1.RestartPolicyAlways, cs(exited(0)), v1.PodRunning},
		{"onfailure, all succeeded", v1.RestartPolicyOnFailure, cs(exited(0), exited(0)), v1.PodSucceeded},
		{"onfailure, one failed", v1.RestartPolicyOnFailure, cs(exited(0), exited(2)), v1.PodRunning},
		{"never, one failed", v1.RestartPolicyNever, cs(exited(0), exited(2)), v1.PodFailed},
		{"never, all succeeded", v1.RestartPolicyNever, cs(exited(0)), v1.PodSucceeded},
	}
	for _, tc := range cases {
		if got := Phase(tc.policy, tc.statuses); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestComputeKeepsTerminalPhase(t *testing.T) {
	s := Pod{Containers: []Container{{Name: "a", State: running}, {Name: "b", State: running}}}
	if st := Compute(testPod(), s, v1.PodStatus{Phase: v1.PodFailed}, t0); st.Phase != v1.PodFailed {
		t.Errorf("phase went from Failed to %s", st.Phase)
	}
}

func TestWritePatchesStatus(t *testing.T) {
	pod := testPod()
	client := fake.NewClientset(pod)
	s := Pod{PodIPs: []string{"10.0.0.5"}, Containers: []Container{{Name: "a", State: running, Ready: true}, {Name: "b", State: exited(0)}}}
	if err := Write(context.Background(), client, pod, Compute(pod, s, v1.PodStatus{}, t0)); err != nil {
		t.Fatal(err)
	}
	got, err := client.CoreV1().Pods("default").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.PodIP != "10.0.0.5" || len(got.Status.ContainerStatuses) != 2 || got.Status.ContainerStatuses[1].State.Terminated == nil {
		t.Errorf("stored status %+v", got.Status)
	}
}
