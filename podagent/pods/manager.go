package pods

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/nodeproxy/nodeproxy/podagent/status"
)

// Config is what a Manager needs. Sandboxes are named "<SandboxPrefix>-<8 hex>" (default
// NodeName). NodeIPs are the pods' host IPs (and hostNetwork pods' pod IPs); PodCIDRs
// has at most one CIDR per family. LogDir receives a log file per container (empty:
// output discarded). Defaults: MaxGracePeriod (bounding grace periods) 30 s,
// ShutdownGrace (for pods stopped because the agent stops) 2 s, restart delay doubling
// from BackoffBase 1 s to BackoffMax 10 s, and the real Clock.
type Config struct {
	NodeName, SandboxPrefix, LogDir                        string
	NodeIPs                                                []string
	PodCIDRs                                               []netip.Prefix
	Client                                                 kubernetes.Interface
	Runtime                                                Runtime
	MaxGracePeriod, ShutdownGrace, BackoffBase, BackoffMax time.Duration
	Clock                                                  clock.WithTicker
}

// Manager runs the pods bound to one node.
type Manager struct {
	cfg  Config
	ipam *allocator

	mu       sync.Mutex
	ctx      context.Context
	pods     map[types.UID]*podRun
	finished map[types.UID]bool
	wg       sync.WaitGroup
}

// NewManager checks cfg, fills in defaults and returns a Manager.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.NodeName == "" || cfg.Client == nil || cfg.Runtime == nil || len(cfg.NodeIPs) == 0 || len(cfg.PodCIDRs) == 0 {
		return nil, errors.New("pod manager needs a node name, node IPs, pod CIDRs, a client and a runtime")
	}
	cfg.MaxGracePeriod = cmp.Or(max(cfg.MaxGracePeriod, 0), 30*time.Second)
	cfg.ShutdownGrace = cmp.Or(max(cfg.ShutdownGrace, 0), 2*time.Second)
	cfg.BackoffBase = cmp.Or(max(cfg.BackoffBase, 0), time.Second)
	cfg.BackoffMax = cmp.Or(max(cfg.BackoffMax, 0), 10*time.Second)
	cfg.SandboxPrefix = cmp.Or(cfg.SandboxPrefix, cfg.NodeName)
	cfg.Clock = cmp.Or[clock.WithTicker](cfg.Clock, clock.RealClock{})
	return &Manager{
		cfg: cfg, ipam: newAllocator(cfg.PodCIDRs), ctx: context.Background(),
		pods: map[types.UID]*podRun{}, finished: map[types.UID]bool{},
	}, nil
}

// Run runs the pods bound to the node until ctx ends, then stops them all (without
// touching the API) and returns when all are torn down.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	factory := informers.NewSharedInformerFactoryWithOptions(m.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", m.cfg.NodeName).String()
		}))
	_, err := factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    m.podChanged,
		UpdateFunc: func(_, obj any) { m.podChanged(obj) },
		DeleteFunc: m.podDeleted,
	})
	if err != nil {
		return fmt.Errorf("watching pods of node %s: %w", m.cfg.NodeName, err)
	}
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
	m.wg.Wait()
	return nil
}

// podChanged starts a run for a new pod and passes updates, deletion included, to its run.
func (m *Manager) podChanged(obj any) {
	pod, ok := obj.(*v1.Pod)
	if !ok || pod.Spec.NodeName != m.cfg.NodeName {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx.Err() != nil {
		return
	}
	run := m.pods[pod.UID]
	if run == nil {
		terminal := pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed
		if m.finished[pod.UID] || (terminal && pod.DeletionTimestamp == nil) {
			return
		}
		klog.InfoS("Starting pod", "pod", klog.KObj(pod), "uid", pod.UID)
		run = &podRun{
			m: m, pod: pod, sandbox: SandboxName(m.cfg.SandboxPrefix, pod.UID),
			stopCh: make(chan stopRequest, 1), notify: make(chan struct{}, 1),
			state: status.Pod{HostIPs: m.cfg.NodeIPs}, waitReason: "ContainerCreating", written: &pod.Status,
		}
		m.pods[pod.UID] = run
		m.wg.Go(func() {
			run.run(m.ctx)
			m.mu.Lock()
			delete(m.pods, pod.UID)
			m.finished[pod.UID] = true
			m.mu.Unlock()
		})
	}
	run.update(func() { run.pod = pod })
	if pod.DeletionTimestamp != nil { // only the first stop request counts
		trySend(run.stopCh, stopRequest{grace: m.gracePeriod(pod, pod.DeletionGracePeriodSeconds), deletion: true})
	}
}

// podDeleted stops the run of a pod that is gone from the API, at once.
func (m *Manager) podDeleted(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	m.mu.Lock()
	run := m.pods[pod.UID]
	m.mu.Unlock()
	if run != nil {
		trySend(run.stopCh, stopRequest{})
	}
}

// gracePeriod is deletion, else the pod's grace period (default 30 s), at most MaxGracePeriod.
func (m *Manager) gracePeriod(pod *v1.Pod, deletion *int64) time.Duration {
	seconds := int64(30)
	if deletion != nil {
		seconds = *deletion
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		seconds = *pod.Spec.TerminationGracePeriodSeconds
	}
	return min(time.Duration(max(seconds, 0))*time.Second, m.cfg.MaxGracePeriod)
}

// backoff is the delay before restart number restarts+1.
func (m *Manager) backoff(restarts int32) time.Duration {
	return min(m.cfg.BackoffBase<<min(restarts, 16), m.cfg.BackoffMax)
}

// event logs and records an event about pod.
func (m *Manager) event(pod *v1.Pod, eventType, reason, message string) {
	klog.InfoS("Pod event", "pod", klog.KObj(pod), "type", eventType, "reason", reason, "message", message)
	now := metav1.NewTime(m.cfg.Clock.Now())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := m.cfg.Client.CoreV1().Events(pod.Namespace).Create(ctx, &v1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", pod.Name, time.Now().UnixNano()), Namespace: pod.Namespace},
		InvolvedObject: v1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Reason:         reason, Message: message, Type: eventType, Count: 1, FirstTimestamp: now, LastTimestamp: now,
		Source: v1.EventSource{Component: "podagent", Host: m.cfg.NodeName},
	}, metav1.CreateOptions{})
	if err != nil {
		klog.ErrorS(err, "Recording pod event", "pod", klog.KObj(pod), "reason", reason)
	}
}

// stopRequest asks a pod run to stop its containers within grace. A deletion marks the
// pod not ready first, and writes its final status and deletes the API object at the end.
type stopRequest struct {
	grace    time.Duration
	deletion bool
}

// podRun is the life of one pod (one UID) on this node.
type podRun struct {
	m       *Manager
	sandbox string
	stopCh  chan stopRequest
	notify  chan struct{}

	mu         sync.Mutex
	pod        *v1.Pod
	state      status.Pod
	waitReason string
	addrs      []netip.Prefix
	containers []*container
	stopping   *stopRequest

	writeMu sync.Mutex
	written *v1.PodStatus // initially the pod's status as first seen
}

// run sets the pod up, runs it until a stop request or the agent's end, then tears it down.
func (p *podRun) run(ctx context.Context) {
	loopCtx, stopLoop := context.WithCancel(ctx)
	defer stopLoop()
	go func() { // writes the status when poked
		for {
			select {
			case <-loopCtx.Done():
				return
			case <-p.notify:
				p.writeStatus(loopCtx)
			}
		}
	}()
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
	req := stopRequest{grace: p.m.cfg.ShutdownGrace}
	select {
	case <-ctx.Done():
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
	fields := downwardAPI(pod, podIPs, p.m.cfg.NodeIPs)
	var containers []*container
	for i := range pod.Spec.Containers {
		containers = append(containers, newContainer(p, pod, &pod.Spec.Containers[i], podIPs[0], fields))
	}
	p.update(func() { p.containers, p.state.PodIPs, p.state.SandboxReady = containers, podIPs, true })
	return "", nil
}

// deletePod removes the pod's API object with grace period 0, if it is still this pod.
func (p *podRun) deletePod(ctx context.Context) {
	pod, zero := p.current(), int64(0)
	err := p.m.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		klog.ErrorS(err, "Deleting pod", "pod", klog.KObj(pod))
		return
	}
	klog.InfoS("Pod deleted", "pod", klog.KObj(pod))
}

func (p *podRun) current() *v1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pod
}

// grace is the stop request's grace period, else (a probe failure) the pod's.
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

func (p *podRun) poke() { trySend(p.notify, struct{}{}) }

// trySend sends v on ch unless that would block.
func trySend[T any](ch chan<- T, v T) {
	select {
	case ch <- v:
	default:
	}
}

// writeStatus writes the pod's status if changed, retrying failures a second later.
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
	st := status.Compute(pod, s, *p.written, p.m.cfg.Clock.Now())
	if apiequality.Semantic.DeepEqual(*p.written, st) {
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
