package pods

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"
)

// fakeRuntime records sandboxes and hands out fake processes.
type fakeRuntime struct {
	mu        sync.Mutex
	sandboxes map[string][]netip.Prefix
	removed   []string
	procs     []*fakeProcess
	// ignoreTerm makes new processes survive SIGTERM.
	ignoreTerm atomic.Bool
	// execCode is the exit code of exec probes.
	execCode atomic.Int32
}

// fakeProcess exits when the test says so or on a signal it does not ignore.
type fakeProcess struct {
	spec       ProcessSpec
	ignoreTerm bool
	exit       chan int
	mu         sync.Mutex
	signals    []syscall.Signal
}

func newFakeRuntime() *fakeRuntime { return &fakeRuntime{sandboxes: map[string][]netip.Prefix{}} }

func (r *fakeRuntime) CreateSandbox(name string, addrs []netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.sandboxes[name]; ok {
		return fmt.Errorf("sandbox %s exists", name)
	}
	r.sandboxes[name] = addrs
	return nil
}

func (r *fakeRuntime) RemoveSandbox(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.sandboxes, name)
	r.removed = append(r.removed, name)
	return nil
}

func (r *fakeRuntime) Start(spec ProcessSpec) (Process, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.sandboxes[spec.Sandbox]; !ok && spec.Sandbox != "" {
		return nil, fmt.Errorf("no sandbox %s", spec.Sandbox)
	}
	p := &fakeProcess{spec: spec, ignoreTerm: r.ignoreTerm.Load(), exit: make(chan int, 1)}
	r.procs = append(r.procs, p)
	return p, nil
}

func (r *fakeRuntime) Exec(context.Context, ProcessSpec) (int, string, error) {
	return int(r.execCode.Load()), "exec output", nil
}

func (r *fakeRuntime) processes() []*fakeProcess {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*fakeProcess(nil), r.procs...)
}

func (r *fakeRuntime) sandbox(name string) ([]netip.Prefix, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	addrs, ok := r.sandboxes[name]
	return addrs, ok
}

func (p *fakeProcess) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	p.signals = append(p.signals, sig)
	p.mu.Unlock()
	if sig == syscall.SIGKILL || !p.ignoreTerm {
		p.exitWith(128 + int(sig))
	}
	return nil
}

func (p *fakeProcess) exitWith(code int) {
	select {
	case p.exit <- code:
	default:
	}
}

func (p *fakeProcess) Wait() int { return <-p.exit }

func (p *fakeProcess) received() []syscall.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]syscall.Signal(nil), p.signals...)
}

const testNode = "n1"

// harness runs a Manager on a fake clientset and runtime, with a fake clock moving
// about a hundred times faster than real time so probe periods pass quickly.
type harness struct {
	t      *testing.T
	client *fake.Clientset
	rt     *fakeRuntime
	cancel context.CancelFunc
	done   chan struct{}
}

func newHarness(t *testing.T, pods ...*v1.Pod) *harness {
	t.Helper()
	h := prepareHarness(t, pods...)
	h.start()
	return h
}

// prepareHarness stores pods in a fake clientset; start starts the manager.
func prepareHarness(t *testing.T, pods ...*v1.Pod) *harness {
	t.Helper()
	h := &harness{t: t, rt: newFakeRuntime(), done: make(chan struct{}), client: fake.NewClientset()}
	for _, p := range pods {
		if err := h.client.Tracker().Add(p); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func (h *harness) start() {
	clk := clocktesting.NewFakeClock(time.Now())
	m, err := NewManager(Config{
		NodeName: testNode, NodeIPs: []string{"192.168.0.2"}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Client: h.client, Runtime: h.rt, BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
		ShutdownGrace: 100 * time.Millisecond, Clock: clk,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		for ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
			clk.Step(500 * time.Millisecond)
		}
	}()
	go func() { defer close(h.done); _ = m.Run(ctx) }()
	h.t.Cleanup(h.stop)
}

// patchedStatus decodes the status in a merge patch.
func patchedStatus(t *testing.T, patch []byte) v1.PodStatus {
	t.Helper()
	var p struct {
		Status v1.PodStatus `json:"status"`
	}
	if err := json.Unmarshal(patch, &p); err != nil {
		t.Fatalf("decoding status patch: %v", err)
	}
	return p.Status
}

// stop stops the manager and waits for it.
func (h *harness) stop() {
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		h.t.Error("manager did not stop")
	}
}

func (h *harness) pod(name string) (*v1.Pod, error) {
	return h.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
}

// waitPod waits until cond holds for the stored pod.
func (h *harness) waitPod(name, what string, cond func(*v1.Pod) bool) *v1.Pod {
	h.t.Helper()
	var last *v1.Pod
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if p, err := h.pod(name); err == nil {
			last = p
			if cond(p) {
				return p
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatalf("pod %s: timed out waiting for %s; last status %+v", name, what, last.Status)
	return nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// events returns "type reason: message" of the recorded events.
func (h *harness) events() []string {
	list, err := h.client.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		out = append(out, fmt.Sprintf("%s %s %s: %s", e.InvolvedObject.Name, e.Type, e.Reason, e.Message))
	}
	return out
}

func (h *harness) hasEvent(substrings ...string) bool {
	for _, e := range h.events() {
		all := true
		for _, s := range substrings {
			all = all && strings.Contains(e, s)
		}
		if all {
			return true
		}
	}
	return false
}

func isReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

func newPod(name string, containers ...v1.Container) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(name + "-0123456789abcdef")},
		Spec:       v1.PodSpec{NodeName: testNode, RestartPolicy: v1.RestartPolicyAlways, Containers: containers},
	}
}

func sleeper(name string) v1.Container {
	return v1.Container{Name: name, Image: "ignored", Command: []string{"sleep"}, Args: []string{"1000"}}
}
