package pods

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/podagent/probe"
)

// validatePod returns the first reason the agent cannot run pod: no containers, init
// containers, a container without a command or whose command is not found, a port
// out of range, or a probe that is not exec, httpGet or tcpSocket or names an unknown port.
func validatePod(pod *v1.Pod) error {
	if len(pod.Spec.Containers) == 0 {
		return fmt.Errorf("pod has no containers")
	}
	if len(pod.Spec.InitContainers) > 0 {
		return fmt.Errorf("init containers are not supported")
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
		return fmt.Errorf("command is required (the image is ignored; the command is a host binary)")
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

// podFacts are the values the downward API env fields can refer to.
type podFacts struct {
	pod     *v1.Pod
	podIPs  []string
	hostIPs []string
	sandbox string
}

// fields are the values of the supported downward API field paths.
func (f podFacts) fields() map[string]string {
	first := func(l []string) string { return strings.Join(l[:min(1, len(l))], "") }
	return map[string]string{
		"metadata.name": f.pod.Name, "metadata.namespace": f.pod.Namespace, "metadata.uid": string(f.pod.UID),
		"spec.nodeName": f.pod.Spec.NodeName, "spec.serviceAccountName": f.pod.Spec.ServiceAccountName,
		"status.podIP": first(f.podIPs), "status.podIPs": strings.Join(f.podIPs, ","),
		"status.hostIP": first(f.hostIPs), "status.hostIPs": strings.Join(f.hostIPs, ","),
	}
}

// containerEnv is the environment of c's processes: the agent's own (so markers such as
// the test harness's are inherited), HOSTNAME (the pod name), the sandbox marker, then
// c's env in order; later entries win. It also returns the names of variables it skipped
// because their source is not supported.
func containerEnv(c *v1.Container, f podFacts) (env, skipped []string) {
	env = append(os.Environ(), "HOSTNAME="+f.pod.Name, SandboxEnv+"="+f.sandbox)
	fields := f.fields()
	for _, e := range c.Env {
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
	return env, skipped
}
