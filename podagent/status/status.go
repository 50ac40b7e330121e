// Package status computes a pod's API status from what the agent runs, and writes it.
package status

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Container is what the agent knows about one container.
type Container struct {
	Name, ID         string
	State, LastState v1.ContainerState
	Ready, Started   bool
	RestartCount     int32
}

// Pod is what the agent knows about one pod. Terminating makes it and its containers
// not ready; Message explains its state, such as an invalid spec.
type Pod struct {
	HostIPs, PodIPs           []string
	SandboxReady, Terminating bool
	Message                   string
	Containers                []Container
}

// Compute builds pod's status from s, keeping the transition times, start time and a
// terminal phase of prev (the status last written).
func Compute(pod *v1.Pod, s Pod, prev v1.PodStatus, now time.Time) v1.PodStatus {
	st := v1.PodStatus{Message: s.Message, StartTime: cmp.Or(prev.StartTime, &metav1.Time{Time: now})}
	for _, ip := range s.HostIPs {
		st.HostIP, st.HostIPs = cmp.Or(st.HostIP, ip), append(st.HostIPs, v1.HostIP{IP: ip})
	}
	for _, ip := range s.PodIPs {
		st.PodIP, st.PodIPs = cmp.Or(st.PodIP, ip), append(st.PodIPs, v1.PodIP{IP: ip})
	}
	var unready []string
	for i, c := range s.Containers {
		cs := v1.ContainerStatus{
			Name: c.Name, ContainerID: c.ID, State: c.State, LastTerminationState: c.LastState,
			Ready: c.Ready && !s.Terminating, Started: &c.Started, RestartCount: c.RestartCount,
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
	condition := func(t v1.PodConditionType, ok bool, reason string) v1.PodCondition {
		c := v1.PodCondition{Type: t, Status: v1.ConditionTrue, LastTransitionTime: metav1.Time{Time: now}}
		if !ok {
			c.Status, c.Reason = v1.ConditionFalse, reason
		}
		if c.Reason != "" {
			c.Message = fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
		}
		for _, old := range prev.Conditions {
			if old.Type == c.Type && old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	st.Conditions = []v1.PodCondition{ // sorted by type
		condition(v1.ContainersReady, len(unready) == 0, "ContainersNotReady"),
		condition(v1.PodInitialized, true, ""),
		condition(v1.PodReadyToStartContainers, s.SandboxReady, ""),
		condition(v1.PodScheduled, true, ""),
		condition(v1.PodReady, len(unready) == 0, "ContainersNotReady"),
	}
	return st
}

// Phase is the pod phase for these container statuses, by kubelet's rules.
func Phase(policy v1.RestartPolicy, statuses []v1.ContainerStatus) v1.PodPhase {
	var running, waiting, unsuccessful int // unsuccessful: failed, or waiting to restart
	for _, cs := range statuses {
		switch {
		case cs.State.Running != nil:
			running++
		case cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0:
		case cs.State.Terminated != nil || cs.LastTerminationState.Terminated != nil:
			unsuccessful++
		default:
			waiting++
		}
	}
	switch {
	case waiting > 0 || len(statuses) == 0:
		return v1.PodPending
	case running > 0 || policy == v1.RestartPolicyAlways:
		return v1.PodRunning
	case unsuccessful == 0:
		return v1.PodSucceeded
	case policy == v1.RestartPolicyNever:
		return v1.PodFailed
	}
	return v1.PodRunning
}

// Write stores st as pod's status with a merge patch conditional on the pod's UID.
func Write(ctx context.Context, client kubernetes.Interface, pod *v1.Pod, st v1.PodStatus) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"uid": pod.UID}, "status": st})
	if err == nil {
		_, err = client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	}
	if err != nil {
		return fmt.Errorf("writing status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}
