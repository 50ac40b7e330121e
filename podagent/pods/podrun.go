package pods

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/podagent/status"
)

// stopRequest asks a pod run to stop its containers within grace.
type stopRequest struct {
	grace time.Duration
	// deletion is a graceful deletion: mark the pod not ready first, and write its final
	// status and delete the API object (grace period 0) at the end.
	deletion bool
}

// podRun is the life of one pod (one UID) on this node.
type podRun struct {
	m       *Manager
	sandbox string
	stopCh  chan stopRequest
	notify  chan struct{}
	done    chan struct{}

	mu         sync.Mutex
	pod        *v1.Pod
	state      status.Pod
	waitReason string
	addrs      []netip.Prefix
	containers []*container
	stopping   *stopRequest

	writeMu sync.Mutex
	written *v1.PodStatus
}

func newPodRun(m *Manager, pod *v1.Pod) *podRun {
	return &podRun{
		m: m, pod: pod, sandbox: SandboxName(m.cfg.SandboxPrefix, pod.UID),
		stopCh: make(chan stopRequest, 1), notify: make(chan struct{}, 1), done: make(chan struct{}),
		state: status.Pod{HostIPs: m.cfg.NodeIPs}, waitReason: "ContainerCreating",
	}
}

// run sets the pod up, runs it until a stop request or the end of ctx (the agent's
// life), then tears it down.
func (p *podRun) run(ctx context.Context) {
	defer close(p.done)
	go p.statusLoop(ctx)
	containerCtx, stopContainers := context.WithCancel(context.Background())
	defer stopContainers()
	var wg sync.WaitGroup
	if pod := p.current(); pod.DeletionTimestamp == nil {
		if reason, err := p.setUp(pod); err != nil {
			p.m.event(pod, v1.EventTypeWarning, reason, err.Error())
			p.update(func() { p.waitReason, p.state.Message = reason, err.Error() })
		}
		for _, c := range p.containers {
			wg.Go(func() { c.run(containerCtx, ctx.Done()) })
		}
	}
	p.poke()

	var req stopRequest
	select {
	case <-ctx.Done():
		req = stopRequest{grace: p.m.cfg.ShutdownGrace}
	case req = <-p.stopCh:
	}
	p.update(func() { p.stopping, p.state.Terminating = &req, true })
	if req.deletion {
		p.writeStatus(ctx)
	}
	stopContainers()
	wg.Wait()
	if p.state.SandboxReady {
		if err := p.m.cfg.Runtime.RemoveSandbox(p.sandbox); err != nil {
			klog.ErrorS(err, "Removing pod sandbox", "pod", klog.KObj(p.current()), "sandbox", p.sandbox)
		}
		p.m.ipam.release(p.addrs)
		p.update(func() { p.state.SandboxReady = false })
	}
	if req.deletion {
		p.writeStatus(ctx)
		p.deletePod(ctx)
	}
}

// setUp checks the spec, allocates addresses, creates the sandbox and prepares the
// containers. On failure it returns a waiting reason for the containers.
func (p *podRun) setUp(pod *v1.Pod) (string, error) {
	if err := validatePod(pod); err != nil {
		return "InvalidSpec", err
	}
	podIPs := p.m.cfg.NodeIPs
	if !pod.Spec.HostNetwork {
		var previous []string
		for _, ip := range pod.Status.PodIPs {
			previous = append(previous, ip.IP)
		}
		addrs, err := p.m.ipam.allocate(previous)
		if err != nil {
			return "CreatePodSandboxError", fmt.Errorf("allocating pod addresses: %w", err)
		}
		if err := p.m.cfg.Runtime.CreateSandbox(p.sandbox, addrs); err != nil {
			p.m.ipam.release(addrs)
			return "CreatePodSandboxError", fmt.Errorf("creating pod sandbox %s: %w", p.sandbox, err)
		}
		podIPs = nil
		for _, a := range addrs {
			podIPs = append(podIPs, a.Addr().String())
		}
		p.addrs = addrs
	}
	facts := podFacts{pod: pod, podIPs: podIPs, hostIPs: p.m.cfg.NodeIPs, sandbox: p.sandbox}
	var containers []*container
	for i := range pod.Spec.Containers {
		containers = append(containers, newContainer(p, &pod.Spec.Containers[i], facts))
	}
	p.update(func() { p.containers, p.state.PodIPs, p.state.SandboxReady = containers, podIPs, true })
	return "", nil
}

// deletePod removes the pod's API object with grace period 0, if it is still this pod.
func (p *podRun) deletePod(ctx context.Context) {
	pod := p.current()
	zero := int64(0)
	err := p.m.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		klog.ErrorS(err, "Deleting pod", "pod", klog.KObj(pod))
		return
	}
	klog.InfoS("Pod deleted", "pod", klog.KObj(pod))
}

// requestStop asks the run to stop; only the first request counts.
func (p *podRun) requestStop(req stopRequest) {
	select {
	case p.stopCh <- req:
	default:
	}
}

func (p *podRun) current() *v1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pod
}

// grace is how long a stopped container gets between SIGTERM and SIGKILL: the stop
// request's, or the pod's termination grace period for a probe failure.
func (p *podRun) grace() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping != nil {
		return p.stopping.grace
	}
	return p.m.gracePeriod(p.pod, nil)
}

// update changes the run's state under its lock and schedules a status write.
func (p *podRun) update(fn func()) {
	p.mu.Lock()
	fn()
	p.mu.Unlock()
	p.poke()
}

func (p *podRun) poke() {
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

func (p *podRun) statusLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.done:
			return
		case <-p.notify:
			p.writeStatus(ctx)
		}
	}
}

// writeStatus writes the pod's status if it changed since the last write; a failed
// write is retried a second later.
func (p *podRun) writeStatus(ctx context.Context) {
	p.writeMu.Lock()
	defer p.writeMu.Unlock()
	p.mu.Lock()
	pod, s := p.pod, p.state
	s.Containers = nil
	for _, c := range p.containers {
		s.Containers = append(s.Containers, c.st)
	}
	for i := len(p.containers); i < len(pod.Spec.Containers); i++ { // not set up (yet)
		s.Containers = append(s.Containers, status.Container{Name: pod.Spec.Containers[i].Name, State: v1.ContainerState{
			Waiting: &v1.ContainerStateWaiting{Reason: p.waitReason, Message: p.state.Message},
		}})
	}
	p.mu.Unlock()
	prev := pod.Status
	if p.written != nil {
		prev = *p.written
	}
	st := status.Compute(pod, s, prev, p.m.clock.Now())
	if p.written != nil && apiequality.Semantic.DeepEqual(*p.written, st) {
		return
	}
	if err := status.Write(ctx, p.m.cfg.Client, pod, st); err != nil {
		if ctx.Err() == nil && !apierrors.IsNotFound(err) {
			klog.ErrorS(err, "Writing pod status; will retry", "pod", klog.KObj(pod))
			time.AfterFunc(time.Second, p.poke)
		}
		return
	}
	p.written = &st
}
