// Package cluster is the end-to-end test harness: a small Kubernetes control plane and the
// test node topology of GUIDE §3, all inside network namespaces made for one run.
//
// Typical use, one cluster shared by a test binary:
//
//	c, err := cluster.New(cluster.Options{})   // or cluster.Start(t, opts) inside one test
//	if errors.Is(err, cluster.ErrPrerequisite) { /* skip: not root, no etcd, no binaries */ }
//	defer c.Stop()
//	node, err := c.StartNode(cluster.NodeA, cluster.NodeOptions{Mode: "nftables"})
//	conn, err := c.Dial(cluster.External, "tcp", "10.96.0.10:80")
//
// The namespaces are "<runID>-cp" (etcd, kube-apiserver, kube-controller-manager at 192.0.2.1),
// "<runID>-lan" (the bridge), "<runID>-node-a" (192.0.2.11), "<runID>-node-b" (192.0.2.12) and
// "<runID>-ext" (192.0.2.100). The run ID is "npe2e-<pid>-<random>", unique per run. Stop
// removes every process and namespace of the run; Leaks proves it did. Processes carry
// RunEnv=<runID> so even their descendants are found. A later run reaps what a killed run
// (for example a test timeout) left behind.
//
// kube-apiserver and kube-controller-manager come from hack/control-plane.sh; etcd from
// Debian's etcd-server package. The proxy and the pod agent are built from this repository on
// the first StartNode.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrPrerequisite marks errors caused by a missing prerequisite (not root, no etcd, control
// plane binaries not built, no pod agent module): tests skip on it instead of failing.
var ErrPrerequisite = errors.New("e2e prerequisite missing")

// Options configures New and Start. The zero value works on a machine prepared by
// hack/deps.sh and hack/control-plane.sh.
type Options struct {
	// BinDir holds kube-apiserver and kube-controller-manager. Default: $NODEPROXY_CACHE/bin,
	// else <repo>/.cache/bin (where hack/control-plane.sh puts them).
	BinDir string
	// EtcdPath is the etcd binary. Default: /usr/bin/etcd.
	EtcdPath string
	// RepoRoot is the nodeproxy checkout, for building the proxy and the pod agent. Default:
	// found by walking up from the working directory to the go.mod of the module.
	RepoRoot string
	// StartTimeout bounds how long each control plane component may take to become ready.
	// Default: 2 minutes.
	StartTimeout time.Duration
	// APIServerArgs and ControllerManagerArgs are appended to the default flags.
	APIServerArgs         []string
	ControllerManagerArgs []string
	// RaceBinaries builds the proxy and the pod agent with the race detector. The end-to-end
	// tests set it: `go test -race` has compiled every dependency with -race already, so the
	// binaries only link (a plain build compiles client-go and the rest again, minutes on a
	// cold cache), and a data race in the real binaries shows in their logs.
	RaceBinaries bool
	// KeepDir keeps the run directory (logs, certificates, kubeconfig) after Stop; it is also
	// kept when NODEPROXY_E2E_KEEP is set in the environment.
	KeepDir bool
}

// Cluster is a running control plane plus the node topology of one run.
type Cluster struct {
	// RunID prefixes every namespace of the run and marks its processes (RunEnv).
	RunID string
	// Dir is the run directory: logs/, pki/, bin/, admin.kubeconfig.
	Dir string

	opts       Options
	topology   topology
	processes  *processSet
	pki        *pki
	kubeconfig string
	etcdDir    string
	restConfig *rest.Config
	client     kubernetes.Interface

	nodesMu sync.Mutex
	nodes   map[string]*Node
	builds  binaryBuilds

	stopOnce sync.Once
	stopErr  error
}

// Start is New for a single test: it skips the test on ErrPrerequisite, fails it on any other
// error, and registers Stop plus a leak check with t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	began := time.Now()
	c, err := New(opts)
	if errors.Is(err, ErrPrerequisite) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster %s up in %v", c.RunID, time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
		if err := c.CheckLeaks(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// New builds the topology and starts etcd, kube-apiserver and kube-controller-manager, waiting
// until each is ready. On failure everything made so far is removed and the error carries the
// tail of the failing component's log. The caller must call Stop.
func New(opts Options) (*Cluster, error) {
	opts, err := opts.complete()
	if err != nil {
		return nil, err
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, fmt.Errorf("making a run ID: %w", err)
	}
	runID := fmt.Sprintf("%s%d-%s", runIDPrefix, os.Getpid(), hex.EncodeToString(suffix))
	reapStaleRuns()
	dir, err := os.MkdirTemp("", runID+"-")
	if err != nil {
		return nil, fmt.Errorf("creating the run directory: %w", err)
	}
	c := &Cluster{
		RunID:     runID,
		Dir:       dir,
		opts:      opts,
		topology:  topology{runID: runID},
		processes: &processSet{runID: runID, logDir: filepath.Join(dir, "logs")},
		nodes:     map[string]*Node{},
	}
	trackCluster(c)
	if err := c.bringUp(); err != nil {
		if stopErr := c.Stop(); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
		return nil, err
	}
	return c, nil
}

// bringUp creates directories, credentials, the network and the control plane.
func (c *Cluster) bringUp() error {
	for _, sub := range []string{"logs", "pki", "bin"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, sub), 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", sub, err)
		}
	}
	servingIPs := []net.IP{net.ParseIP(ControlPlaneIP), net.ParseIP(KubernetesIP), net.ParseIP("127.0.0.1")}
	p, err := generatePKI(filepath.Join(c.Dir, "pki"), servingIPs)
	if err != nil {
		return err
	}
	c.pki = p
	c.kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	if err := p.writeKubeconfig(c.kubeconfig, "https://"+net.JoinHostPort(ControlPlaneIP, "6443")); err != nil {
		return err
	}
	if err := c.topology.create(); err != nil {
		return fmt.Errorf("creating the network: %w", err)
	}
	if err := c.newClient(); err != nil {
		return err
	}
	return c.startControlPlane()
}

// newClient makes the admin client; its connections are dialled from the cp namespace.
func (c *Cluster) newClient() error {
	config, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return fmt.Errorf("loading %s: %w", c.kubeconfig, err)
	}
	cpNS := c.NS(ControlPlane)
	config.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialContext(ctx, cpNS, network, addr)
	}
	config.QPS, config.Burst = 100, 200
	config.UserAgent = "nodeproxy-e2e"
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("creating the admin client: %w", err)
	}
	c.restConfig, c.client = config, client
	return nil
}

// Stop stops every process of the run (SIGTERM, then SIGKILL), deletes its namespaces and
// removes the run directory unless it is kept. It is idempotent and safe to call concurrently.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		if err := c.processes.stopAll(); err != nil {
			errs = append(errs, err)
		}
		if err := c.topology.destroy(); err != nil {
			errs = append(errs, err)
		}
		if c.etcdDir != "" {
			if err := os.RemoveAll(c.etcdDir); err != nil {
				errs = append(errs, fmt.Errorf("removing etcd data: %w", err))
			}
		}
		if c.opts.KeepDir || os.Getenv("NODEPROXY_E2E_KEEP") != "" {
			fmt.Fprintf(os.Stderr, "e2e: kept run directory %s\n", c.Dir)
		} else if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing the run directory: %w", err))
		}
		untrackCluster(c)
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// CheckLeaks returns an error naming every namespace and process of the run still present.
// Call it after Stop.
func (c *Cluster) CheckLeaks() error {
	leaks, err := Leaks(c.RunID)
	if err != nil {
		return fmt.Errorf("checking for leaks of run %s: %w", c.RunID, err)
	}
	if len(leaks) > 0 {
		return fmt.Errorf("run %s leaked: %s", c.RunID, strings.Join(leaks, ", "))
	}
	return nil
}

// Client returns a client authenticated as the admin (group system:masters).
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// RESTConfig returns a copy of the admin client's configuration, for other client types.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// Kubeconfig returns the path of the admin kubeconfig. Its server address, 192.0.2.1:6443, is
// reachable from the run's namespaces, not from the host.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// CACertFile returns the path of the CA certificate that signed the serving certificates.
func (c *Cluster) CACertFile() string { return c.pki.CACert }

// NS returns the named network namespace of a topology member ("cp", "lan", "node-a",
// "node-b", "ext"). Names already carrying the run prefix are returned unchanged.
func (c *Cluster) NS(member string) string { return c.topology.ns(member) }

// NodeNS returns the named network namespace of a node ("node-a" or "node-b").
func (c *Cluster) NodeNS(node string) string { return c.topology.ns(node) }

// Exec runs argv inside a namespace (a member name or a full namespace name) with
// `ip netns exec` and returns its standard output. The error includes standard error.
func (c *Cluster) Exec(ns string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.NS(ns)}, argv...)...)
	cmd.Env = append(os.Environ(), RunEnv+"="+c.RunID)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("running %q in %s: %w: %s", strings.Join(argv, " "), c.NS(ns), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// StartProcess starts a long-running command inside a namespace. Its output goes to
// <Dir>/logs/<name>.log; Stop ends it (SIGTERM, then SIGKILL) if it is still running.
func (c *Cluster) StartProcess(ns, name string, argv ...string) (*Process, error) {
	return c.processes.start(c.NS(ns), name, argv...)
}

// Dial connects to addr from inside a namespace, with a 10 s timeout.
func (c *Cluster) Dial(ns, network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return dialContext(ctx, c.NS(ns), network, addr)
}

// DialContext connects to addr from inside a namespace.
func (c *Cluster) DialContext(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	return dialContext(ctx, c.NS(ns), network, addr)
}

// Listen opens a listener inside a namespace (for example a TCP server on a node address).
func (c *Cluster) Listen(ns, network, addr string) (net.Listener, error) {
	var listener net.Listener
	err := inNamespace(c.NS(ns), func() error {
		var err error
		listener, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s in %s: %w", network, addr, c.NS(ns), err)
	}
	return listener, nil
}

// HTTPClient returns an HTTP client whose connections start inside a namespace. It keeps no
// idle connections, so every request is a new connection (and a new load-balancing choice).
func (c *Cluster) HTTPClient(ns string, timeout time.Duration) *http.Client {
	return httpClient(c.NS(ns), timeout)
}

// complete fills defaults and checks the prerequisites.
func (o Options) complete() (Options, error) {
	if os.Geteuid() != 0 {
		return o, fmt.Errorf("%w: the e2e cluster needs root (network namespaces)", ErrPrerequisite)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return o, fmt.Errorf("%w: iproute2's ip command not found (hack/deps.sh installs it)", ErrPrerequisite)
	}
	if o.EtcdPath == "" {
		o.EtcdPath = "/usr/bin/etcd"
	}
	if _, err := os.Stat(o.EtcdPath); err != nil {
		return o, fmt.Errorf("%w: etcd not found at %s (hack/deps.sh installs etcd-server)", ErrPrerequisite, o.EtcdPath)
	}
	if o.RepoRoot == "" {
		root, err := findRepoRoot()
		if err != nil {
			return o, err
		}
		o.RepoRoot = root
	}
	if o.BinDir == "" {
		o.BinDir = defaultBinDir(o.RepoRoot)
	}
	for _, name := range []string{"kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, name)); err != nil {
			return o, fmt.Errorf("%w: %s not found in %s (run hack/control-plane.sh)", ErrPrerequisite, name, o.BinDir)
		}
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 2 * time.Minute
	}
	return o, nil
}

// defaultBinDir is where hack/control-plane.sh puts the control plane binaries.
func defaultBinDir(repoRoot string) string {
	if cache := os.Getenv("NODEPROXY_CACHE"); cache != "" {
		return filepath.Join(cache, "bin")
	}
	return filepath.Join(repoRoot, ".cache", "bin")
}

// modulePath is the module whose root findRepoRoot looks for.
const modulePath = "github.com/nodeproxy/nodeproxy"

// findRepoRoot walks up from the working directory to the go.mod declaring modulePath.
func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("getting the working directory: %w", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module "+modulePath+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%w: no go.mod of %s above the working directory", ErrPrerequisite, modulePath)
		}
		dir = parent
	}
}
