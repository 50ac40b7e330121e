package pods

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Config is what a Manager needs.
type Config struct {
	NodeName string
	// SandboxPrefix starts the pod namespace names: "<prefix>-<8 hex>" (default NodeName).
	SandboxPrefix string
	// NodeIPs are the node's addresses, the pods' host IPs (and pod IPs of hostNetwork pods).
	NodeIPs []string
	// PodCIDRs are the node's pod CIDRs, at most one per family.
	PodCIDRs []netip.Prefix
	Client   kubernetes.Interface
	Runtime  Runtime
	// LogDir receives one log file per container; empty discards container output.
	LogDir string
	// MaxGracePeriod bounds termination grace periods (default 30 s).
	MaxGracePeriod time.Duration
	// ShutdownGrace is the grace period of pods stopped because the agent stops (default 2 s).
	ShutdownGrace time.Duration
	// BackoffBase and BackoffMax bound the restart delay, which doubles per restart
	// (defaults 1 s and 10 s).
	BackoffBase, BackoffMax time.Duration
	// Clock drives probes and status times (default the real clock).
	Clock clock.WithTicker
}

// Manager runs the pods bound to one node.
type Manager struct {
	cfg   Config
	clock clock.WithTicker
	ipam  *allocator

	mu       sync.Mutex
	ctx      context.Context
	pods     map[types.UID]*podRun
	finished map[types.UID]bool
	wg       sync.WaitGroup
}

// NewManager checks cfg, fills in defaults and returns a Manager.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.NodeName == "" || cfg.Client == nil || cfg.Runtime == nil || len(cfg.NodeIPs) == 0 || len(cfg.PodCIDRs) == 0 {
		return nil, fmt.Errorf("pod manager needs a node name, node IPs, pod CIDRs, a client and a runtime")
	}
	cfg.MaxGracePeriod = cmp.Or(max(cfg.MaxGracePeriod, 0), 30*time.Second)
	cfg.ShutdownGrace = cmp.Or(max(cfg.ShutdownGrace, 0), 2*time.Second)
	cfg.BackoffBase = cmp.Or(max(cfg.BackoffBase, 0), time.Second)
	cfg.BackoffMax = cmp.Or(max(cfg.BackoffMax, 0), 10*time.Second)
	cfg.SandboxPrefix = cmp.Or(cfg.SandboxPrefix, cfg.NodeName)
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Manager{
		cfg: cfg, clock: cfg.Clock, ipam: newAllocator(cfg.PodCIDRs), ctx: context.Background(),
		pods: map[types.UID]*podRun{}, finished: map[types.UID]bool{},
	}, nil
}

// Run watches the pods bound to the node and runs them until ctx ends; it then stops
// every pod (without touching the API) and returns when all are torn down.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	factory := informers.NewSharedInformerFactoryWithOptions(m.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", m.cfg.NodeName).String()
		}))
	informer := factory.Core().V1().Pods().Informer()
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
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
		run = newPodRun(m, pod)
		m.pods[pod.UID] = run
		m.wg.Go(func() {
			run.run(m.ctx)
			m.mu.Lock()
			delete(m.pods, pod.UID)
			m.finished[pod.UID] = true
			m.mu.Unlock()
		})
	}
	run.mu.Lock()
	run.pod = pod
	run.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		run.requestStop(stopRequest{grace: m.gracePeriod(pod, pod.DeletionGracePeriodSeconds), deletion: true})
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
		run.requestStop(stopRequest{})
	}
}

// gracePeriod is the deletion's grace period, else the pod's termination grace period
// (default 30 s), bounded by MaxGracePeriod.
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
	d := m.cfg.BackoffBase
	for range restarts {
		if d *= 2; d >= m.cfg.BackoffMax {
			return m.cfg.BackoffMax
		}
	}
	return min(d, m.cfg.BackoffMax)
}

// event logs and records an event about pod.
func (m *Manager) event(pod *v1.Pod, eventType, reason, message string) {
	klog.InfoS("Pod event", "pod", klog.KObj(pod), "type", eventType, "reason", reason, "message", message)
	now := metav1.NewTime(m.clock.Now())
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
