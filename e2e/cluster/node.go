package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ErrPodAgentMissing is returned by StartNode when the pod agent module (podagent/go.mod) is
// not in the repository. It wraps ErrPrerequisite, so tests can skip on it.
var ErrPodAgentMissing = fmt.Errorf("%w: podagent/go.mod not found", ErrPrerequisite)

// Ports of the proxy on a node's address.
const (
	ProxyHealthzPort = "10256"
	ProxyMetricsPort = "10249"
)

// DefaultZone is the topology zone of the nodes unless NodeOptions says otherwise.
const DefaultZone = "z1"

// nodeAddresses are the lan address and pod CIDR of each node of the topology.
var nodeAddresses = map[string]struct{ ip, podCIDR string }{
	NodeA: {NodeAIP, NodeAPodCIDR},
	NodeB: {NodeBIP, NodeBPodCIDR},
}

// NodeOptions configures StartNode.
type NodeOptions struct {
	// Mode is the proxy's --proxy-mode ("nftables", "iptables", ...); empty leaves the flag out.
	Mode string
	// ProxyArgs are appended to the proxy's default flags.
	ProxyArgs []string
	// ProxyBinary runs this binary instead of building ./cmd/proxy (for example upstream
	// kube-proxy, to compare). It must accept kube-proxy's flags.
	ProxyBinary string
	// Zone is the node's topology.kubernetes.io/zone label and the pod agent's --zone.
	// Default: DefaultZone.
	Zone string
	// SkipProxy and SkipPodAgent leave the proxy or the pod agent out.
	SkipProxy    bool
	SkipPodAgent bool
	// PodAgentArgs are appended to `podagent run`'s flags.
	PodAgentArgs []string
	// SkipWait returns without waiting for the proxy's /healthz to answer 200.
	SkipWait bool
	// WaitTimeout bounds the wait for the proxy's /healthz. Default: 1 minute.
	WaitTimeout time.Duration
}

// Node is a node of the topology with the processes StartNode started on it.
type Node struct {
	// Name is the Node object's name and the topology member ("node-a", "node-b").
	Name string
	// IP is the node's lan address, PodCIDR its pod range, NS its network namespace.
	IP, PodCIDR, NS string
	// Proxy and PodAgent are the running processes, nil when not started.
	Proxy, PodAgent *Process
}

// HealthzURL is the proxy's health endpoint on this node.
func (n *Node) HealthzURL() string { return "http://" + n.IP + ":" + ProxyHealthzPort + "/healthz" }

// MetricsURL is the proxy's metrics endpoint on this node.
func (n *Node) MetricsURL() string { return "http://" + n.IP + ":" + ProxyMetricsPort + "/metrics" }

// RequireNode is StartNode for tests: it skips on ErrPrerequisite (for example no pod agent
// yet), fails on other errors and stops the node at the end of the test.
func (c *Cluster) RequireNode(t testing.TB, name string, opts NodeOptions) *Node {
	t.Helper()
	t.Cleanup(func() {
		if err := c.StopNode(name); err != nil {
			t.Errorf("stopping node %s: %v", name, err)
		}
	})
	node, err := c.StartNode(name, opts)
	if errors.Is(err, ErrPrerequisite) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return node
}

// StartNode registers the Node object (RegisterNode) and starts the proxy and the pod agent
// in the node's namespace, building them on first use. Unless opts.SkipWait, it waits for the
// proxy's /healthz to answer 200. A node runs one set of processes at a time: StopNode first
// to restart it with other options.
func (c *Cluster) StartNode(name string, opts NodeOptions) (*Node, error) {
	addresses, ok := nodeAddresses[name]
	if !ok {
		return nil, fmt.Errorf("starting node %q: not a node of the topology (%s, %s)", name, NodeA, NodeB)
	}
	if opts.Zone == "" {
		opts.Zone = DefaultZone
	}
	node := &Node{Name: name, IP: addresses.ip, PodCIDR: addresses.podCIDR, NS: c.NodeNS(name)}
	c.nodesMu.Lock()
	_, running := c.nodes[name]
	if !running {
		c.nodes[name] = node // reserved; removed again if starting fails
	}
	c.nodesMu.Unlock()
	if running {
		return nil, fmt.Errorf("starting node %s: already started", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := c.RegisterNode(ctx, name, opts.Zone)
	if err == nil {
		err = c.startNodeProcesses(node, opts)
	}
	if err != nil {
		err = errors.Join(err, stopNodeProcesses(node))
		c.nodesMu.Lock()
		delete(c.nodes, name)
		c.nodesMu.Unlock()
		return nil, err
	}
	if opts.SkipWait || node.Proxy == nil {
		return node, nil
	}
	if opts.WaitTimeout == 0 {
		opts.WaitTimeout = time.Minute
	}
	waitCtx, waitCancel := context.WithTimeout(context.Background(), opts.WaitTimeout)
	defer waitCancel()
	if err := c.WaitForHTTP(waitCtx, name, node.HealthzURL()); err != nil {
		return node, fmt.Errorf("proxy on %s not healthy: %w; log tail:\n%s", name, err, node.Proxy.LogTail(30))
	}
	return node, nil
}

// startNodeProcesses builds what is needed first, so a missing pod agent starts nothing.
func (c *Cluster) startNodeProcesses(node *Node, opts NodeOptions) error {
	var podAgent, proxy string
	var err error
	if !opts.SkipPodAgent {
		if podAgent, err = c.builds.podAgent(c); err != nil {
			return err
		}
	}
	if !opts.SkipProxy {
		if proxy = opts.ProxyBinary; proxy == "" {
			if proxy, err = c.builds.proxy(c); err != nil {
				return err
			}
		}
	}
	if podAgent != "" {
		args := append([]string{podAgent, "run",
			"--kubeconfig=" + c.kubeconfig,
			"--node-name=" + node.Name,
			"--node-ip=" + node.IP,
			"--pod-cidr=" + node.PodCIDR,
			"--bridge=cbr0",
			"--zone=" + opts.Zone,
			"--netns-prefix=" + node.NS,
			"--log-dir=" + filepath.Join(c.Dir, "logs", "pods-"+node.Name),
		}, opts.PodAgentArgs...)
		if node.PodAgent, err = c.StartProcess(node.NS, "podagent-"+node.Name, args...); err != nil {
			return err
		}
	}
	if proxy != "" {
		args := []string{proxy,
			"--kubeconfig=" + c.kubeconfig,
			"--hostname-override=" + node.Name,
			"--bind-address=" + node.IP,
			"--cluster-cidr=" + ClusterCIDR,
			"--healthz-bind-address=" + node.IP + ":" + ProxyHealthzPort,
			"--metrics-bind-address=" + node.IP + ":" + ProxyMetricsPort,
		}
		if opts.Mode != "" {
			args = append(args, "--proxy-mode="+opts.Mode)
		}
		if node.Proxy, err = c.StartProcess(node.NS, "proxy-"+node.Name, append(args, opts.ProxyArgs...)...); err != nil {
			return err
		}
	}
	return nil
}

// StopNode stops the proxy and the pod agent of a node (the kernel state they programmed
// stays, as on a real node). Stopping a node that is not running is a no-op.
func (c *Cluster) StopNode(name string) error {
	c.nodesMu.Lock()
	node := c.nodes[name]
	delete(c.nodes, name)
	c.nodesMu.Unlock()
	if node == nil {
		return nil
	}
	return stopNodeProcesses(node)
}

func stopNodeProcesses(node *Node) error {
	var errs []error
	for _, p := range []*Process{node.Proxy, node.PodAgent} {
		if p != nil {
			if err := p.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// RegisterNode creates or updates the Node object of a topology node the way a kubelet would:
// hostname and zone labels, spec.podCIDR(s), an InternalIP address and a Ready condition.
func (c *Cluster) RegisterNode(ctx context.Context, name, zone string) error {
	addresses, ok := nodeAddresses[name]
	if !ok {
		return fmt.Errorf("registering node %q: not a node of the topology", name)
	}
	nodes := c.client.CoreV1().Nodes()
	node, err := nodes.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node, err = nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("getting or creating Node %s: %w", name, err)
	}
	if node.Labels == nil {
		node.Labels = map[string]string{}
	}
	node.Labels[corev1.LabelHostname] = name
	node.Labels[corev1.LabelTopologyZone] = zone
	node.Labels[corev1.LabelOSStable] = "linux"
	node.Spec.PodCIDR = addresses.podCIDR
	node.Spec.PodCIDRs = []string{addresses.podCIDR}
	if node, err = nodes.Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating Node %s: %w", name, err)
	}
	now := metav1.Now()
	node.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: addresses.ip},
		{Type: corev1.NodeHostName, Address: name},
	}
	node.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "NodeproxyE2E",
		LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	if _, err := nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating the status of Node %s: %w", name, err)
	}
	return nil
}

// binaryBuilds builds the proxy and the pod agent once per run, into <run dir>/bin.
type binaryBuilds struct {
	mu    sync.Mutex
	built map[string]string
}

func (b *binaryBuilds) proxy(c *Cluster) (string, error) {
	return b.build(c, "proxy", c.opts.RepoRoot, "./cmd/proxy")
}

func (b *binaryBuilds) podAgent(c *Cluster) (string, error) {
	moduleDir := filepath.Join(c.opts.RepoRoot, "podagent")
	if _, err := os.Stat(filepath.Join(moduleDir, "go.mod")); err != nil {
		return "", ErrPodAgentMissing
	}
	return b.build(c, "podagent", moduleDir, ".")
}

// build runs `go build [-race] -o <run dir>/bin/<name> <pkg>` in dir, once.
func (b *binaryBuilds) build(c *Cluster, name, dir, pkg string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if path, ok := b.built[name]; ok {
		return path, nil
	}
	path := filepath.Join(c.Dir, "bin", name)
	args := []string{"build", "-o", path, pkg}
	if c.opts.RaceBinaries {
		args = []string{"build", "-race", "-o", path, pkg}
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s in %s: %w: %s", name, dir, err, strings.TrimSpace(string(out)))
	}
	if b.built == nil {
		b.built = map[string]string{}
	}
	b.built[name] = path
	return path, nil
}
