// Package status computes a pod's API status from what the agent runs, and writes it.
package status

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Container is what the agent knows about one container.
type Container struct {
	Name         string
	ID           string
	State        v1.ContainerState
	LastState    v1.ContainerState
	Ready        bool
	Started      bool
	RestartCount int32
}

// Pod is what the agent knows about one pod.
type Pod struct {
	HostIPs      []string
	PodIPs       []string
	SandboxReady bool
	// Terminating makes every container and the pod not ready.
	Terminating bool
	// Message is a pod-level explanation, such as why its spec is invalid.
	Message    string
	Containers []Container
}

// Compute builds the status of pod from s. prev is the status last written (or the
// pod's current status); condition transition times and the start time carry over
// from it, and a terminal phase in it is kept.
func Compute(pod *v1.Pod, s Pod, prev v1.PodStatus, now time.Time) v1.PodStatus {
	st := v1.PodStatus{Message: s.Message, StartTime: prev.StartTime}
	if st.StartTime == nil {
		st.StartTime = &metav1.Time{Time: now}
	}
	for _, ip := range s.HostIPs {
		st.HostIP, st.HostIPs = cmp.Or(st.HostIP, ip), append(st.HostIPs, v1.HostIP{IP: ip})
	}
	for _, ip := range s.PodIPs {
		st.PodIP, st.PodIPs = cmp.Or(st.PodIP, ip), append(st.PodIPs, v1.PodIP{IP: ip})
	}
	var unready []string
	for i, c := range s.Containers {
		started := c.Started
		cs := v1.ContainerStatus{
			Name: c.Name, ContainerID: c.ID, State: c.State, LastTerminationState: c.LastState,
			Ready: c.Ready && !s.Terminating, Started: &started, RestartCount: c.RestartCount,
			Image: pod.Spec.Containers[min(i, len(pod.Spec.Containers)-1)].Image, ImageID: "podagent://host",
		}
		if !cs.Ready {
			unready = append(unready, c.Name)
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	st.Phase = Phase(pod.Spec.RestartPolicy, st.ContainerStatuses)
	if prev.Phase == v1.PodSucceeded || prev.Phase == v1.PodFailed {
		st.Phase = prev.Phase
	}
	unreadyMsg := fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
	st.Conditions = []v1.PodCondition{
		condition(v1.PodReadyToStartContainers, s.SandboxReady, "", ""),
		condition(v1.PodInitialized, true, "", ""),
		condition(v1.PodReady, len(unready) == 0, "ContainersNotReady", unreadyMsg),
		condition(v1.ContainersReady, len(unready) == 0, "ContainersNotReady", unreadyMsg),
		condition(v1.PodScheduled, true, "", ""),
	}
	for i := range st.Conditions {
		c := &st.Conditions[i]
		c.LastTransitionTime = metav1.Time{Time: now}
		for _, old := range prev.Conditions {
			if old.Type == c.Type && old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	sort.Slice(st.Conditions, func(i, j int) bool { return st.Conditions[i].Type < st.Conditions[j].Type })
	return st
}

func condition(t v1.PodConditionType, ok bool, reason, message string) v1.PodCondition {
	if ok {
		return v1.PodCondition{Type: t, Status: v1.ConditionTrue}
	}
	return v1.PodCondition{Type: t, Status: v1.ConditionFalse, Reason: reason, Message: message}
}

// Phase is the pod phase for these container statuses, by kubelet's rules: Pending
// while a container has not run yet, Running while one runs or will be restarted,
// otherwise Succeeded or Failed by the exit codes.
func Phase(policy v1.RestartPolicy, statuses []v1.ContainerStatus) v1.PodPhase {
	var running, waiting, stopped, succeeded int
	for _, cs := range statuses {
		switch {
		case cs.State.Running != nil:
			running++
		case cs.State.Terminated != nil:
			stopped++
			if cs.State.Terminated.ExitCode == 0 {
				succeeded++
			}
		case cs.LastTerminationState.Terminated != nil:
			stopped++
		default:
			waiting++
		}
	}
	switch {
	case waiting > 0 || len(statuses) == 0:
		return v1.PodPending
	case running > 0:
		return v1.PodRunning
	case policy == v1.RestartPolicyAlways:
		return v1.PodRunning
	case stopped == succeeded:
		return v1.PodSucceeded
	case policy == v1.RestartPolicyNever:
		return v1.PodFailed
	}
	return v1.PodRunning
}

// Write stores st as the status of pod with a JSON merge patch of the status
// subresource, conditional on the pod's UID.
func Write(ctx context.Context, client kubernetes.Interface, pod *v1.Pod, st v1.PodStatus) error {
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status":   st,
	})
	if err != nil {
		return fmt.Errorf("encoding status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	_, err = client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("writing status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}
