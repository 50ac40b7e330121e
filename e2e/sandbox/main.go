// Command sandbox is `make run`: a local sandbox node in network namespaces. It starts a
// control plane (etcd, kube-apiserver, kube-controller-manager), node-a running
// `proxy --mode=nftables` (or $MODE) with the pod agent, a demo Deployment and Service, checks
// that the Service answers from the outside client, prints what to try, and removes
// everything on Ctrl-C.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

const (
	demoNamespace = "demo"
	demoName      = "echo"
	demoNodePort  = 30080
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		os.Exit(1)
	}
}

func run() error {
	mode := os.Getenv("MODE")
	if mode == "" {
		mode = "nftables"
	}
	began := time.Now()
	c, err := cluster.New(cluster.Options{})
	if err != nil {
		return fmt.Errorf("starting the control plane: %w", err)
	}
	defer stop(c)
	node, err := c.StartNode(cluster.NodeA, cluster.NodeOptions{Mode: mode})
	if err != nil {
		return fmt.Errorf("starting %s: %w", cluster.NodeA, err)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	clusterIP, err := deployDemo(ctx, c.Client(), filepath.Join(c.Dir, "bin", "podagent"))
	if err != nil {
		return err
	}
	reply, err := waitForService(ctx, c, node.IP)
	if err != nil {
		return err
	}
	printHelp(c, node, mode, clusterIP, reply, time.Since(began))
	<-ctx.Done()
	fmt.Println("\nsandbox: stopping and removing everything ...")
	return nil
}

// stop removes the sandbox and reports anything left behind.
func stop(c *cluster.Cluster) {
	if err := c.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox: stopping:", err)
	}
	if err := c.CheckLeaks(); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox: left behind:", err)
		return
	}
	fmt.Println("sandbox: removed; nothing left behind")
}

// deployDemo creates a 2-replica echo Deployment on node-a and a NodePort Service for it, and
// returns the Service's cluster IP.
func deployDemo(ctx context.Context, client kubernetes.Interface, podagent string) (string, error) {
	labels := map[string]string{"app": demoName}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: demoNamespace}}, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating namespace %s: %w", demoNamespace, err)
	}
	container := v1.Container{
		Name:    "echo",
		Image:   "ignored-by-the-pod-agent",
		Command: []string{podagent, "serve", "--tcp=8080", "--http=8081"},
		Env:     []v1.EnvVar{{Name: "POD_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Ports:   []v1.ContainerPort{{Name: "echo", ContainerPort: 8080}, {Name: "http", ContainerPort: 8081}},
		ReadinessProbe: &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
			PeriodSeconds: 1},
	}
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: demoName, Namespace: demoNamespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: v1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				// No scheduler runs in the sandbox: the pods are placed on node-a directly.
				Spec: v1.PodSpec{NodeName: cluster.NodeA, Containers: []v1.Container{container}},
			},
		},
	}
	if _, err := client.AppsV1().Deployments(demoNamespace).Create(ctx, deploy, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating the demo Deployment: %w", err)
	}
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: demoName, Namespace: demoNamespace},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, Selector: labels, Ports: []v1.ServicePort{
			{Name: "echo", Port: 80, TargetPort: intstr.FromString("echo"), NodePort: demoNodePort, Protocol: v1.ProtocolTCP},
		}},
	}
	created, err := client.CoreV1().Services(demoNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("creating the demo Service: %w", err)
	}
	return created.Spec.ClusterIP, nil
}

// waitForService connects from the outside client to the NodePort until a pod answers
// (bounded: 90 s), and returns the first reply.
func waitForService(ctx context.Context, c *cluster.Cluster, nodeIP string) (string, error) {
	addr := fmt.Sprintf("%s:%d", nodeIP, demoNodePort)
	deadline := time.Now().Add(90 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		reply, err := echo(c, addr)
		if err == nil {
			return reply, nil
		}
		lastErr = err
		time.Sleep(500 * time.Millisecond)
	}
	return "", fmt.Errorf("the demo Service did not answer on %s from the outside client: %w", addr, errors.Join(lastErr, ctx.Err()))
}

// echo reads the greeting line of the demo echo server at addr, from the outside client.
func echo(c *cluster.Cluster, addr string) (string, error) {
	conn, err := c.Dial("ext", "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// printHelp says what runs where and what to try.
func printHelp(c *cluster.Cluster, node *cluster.Node, mode, clusterIP, reply string, took time.Duration) {
	ext, nodeNS := c.NS("ext"), node.NS
	fmt.Printf(`
nodeproxy sandbox is up (%s to come up).

  control plane   %s (kubeconfig: %s)
  node-a          %s, proxy --mode=%s, pod agent; netns %s
  outside client  192.0.2.100; netns %s
  demo            Deployment demo/echo (2 pods) behind Service demo/echo
                  ClusterIP %s:80, NodePort %s:%d
  check           from the outside client, the NodePort answered: %q

Try:
  ip netns exec %s bash -c 'exec 3<>/dev/tcp/%s/%d; head -1 <&3'     # outside -> NodePort
  ip netns exec %s bash -c 'exec 3<>/dev/tcp/%s/80; head -1 <&3'     # node -> ClusterIP
  ip netns exec %s %s trace --src %s --dst %s --port 80 --from node
  ip netns exec %s nft list table ip nodeproxy                       # the rules
  KUBECONFIG=%s kubectl get endpointslices -n demo                   # if you have kubectl

Ctrl-C removes everything.
`, took.Round(time.Second), c.NS("cp"), c.Kubeconfig(), node.IP, mode, nodeNS, ext,
		clusterIP, node.IP, demoNodePort, reply,
		ext, node.IP, demoNodePort, nodeNS, clusterIP,
		nodeNS, filepath.Join(c.Dir, "bin", "proxy"), node.IP, clusterIP,
		nodeNS, c.Kubeconfig())
}
