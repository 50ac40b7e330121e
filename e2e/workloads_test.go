package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// Ports of the pods' test server (podagent serve) and of every Service of the feature tests.
const (
	echoPort    = 8080 // TCP and UDP echo
	controlPort = 8081 // HTTP: /readyz, /healthz, /fail/..., /recover
	servicePort = 80
)

// Timing of the workloads.
const (
	readinessPeriod   = 2 // seconds, of the "ready" pods' readiness probe
	readinessFailures = 2 // its failure threshold
	livenessPeriod    = 1 // seconds, of the "live" pod's liveness probe
	livenessFailures  = 2
	drainDelay        = 6 * time.Second // of the "drain" pod's server after SIGTERM
	drainGrace        = 10              // seconds, the "drain" pod's terminationGracePeriodSeconds
)

// workload is a Deployment whose pods all run on one node (the e2e cluster has no scheduler,
// so the template sets nodeName). Workloads sharing labels form one Service's endpoints.
type workload struct {
	name      string
	node      string
	replicas  int32
	labels    map[string]string
	drain     time.Duration
	grace     int64
	readiness *corev1.Probe
	liveness  *corev1.Probe
}

// deployLabel names a pod's workload.
const deployLabel = "e2e.nodeproxy.io/deployment"

// featureWorkloads are the Deployments of one mode's namespace.
func featureWorkloads() []workload {
	ready := func(period, failures int32) *corev1.Probe { return httpProbe("/readyz", period, failures) }
	return []workload{
		{name: "web-a", node: cluster.NodeA, replicas: 2, labels: map[string]string{"app": "web", "node": "a"}, readiness: ready(1, 3)},
		{name: "web-b", node: cluster.NodeB, replicas: 1, labels: map[string]string{"app": "web", "node": "b"}, readiness: ready(1, 3)},
		{name: "ready", node: cluster.NodeA, replicas: 2, labels: map[string]string{"app": "ready"}, readiness: ready(readinessPeriod, readinessFailures)},
		{name: "drain", node: cluster.NodeA, replicas: 1, labels: map[string]string{"app": "drain"}, readiness: ready(1, 3), drain: drainDelay, grace: drainGrace},
		{name: "scale", node: cluster.NodeB, replicas: 1, labels: map[string]string{"app": "scale"}, readiness: ready(1, 3)},
		{name: "live", node: cluster.NodeA, replicas: 1, labels: map[string]string{"app": "live"}, readiness: ready(1, 3),
			liveness: httpProbe("/healthz", livenessPeriod, livenessFailures)},
		{name: "client-a", node: cluster.NodeA, replicas: 1, labels: map[string]string{"app": "client"}},
		{name: "client-b", node: cluster.NodeB, replicas: 1, labels: map[string]string{"app": "client"}},
	}
}

func httpProbe(path string, period, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(controlPort)}},
		PeriodSeconds: period, FailureThreshold: failures, SuccessThreshold: 1, TimeoutSeconds: 1,
	}
}

// deployment is the workload's Deployment; its container runs `podagent serve`.
func (w workload) deployment(podagent string) *appsv1.Deployment {
	labels := map[string]string{deployLabel: w.name}
	for k, v := range w.labels {
		labels[k] = v
	}
	grace := w.grace
	if grace == 0 {
		grace = 1
	}
	command := []string{podagent, "serve", "--tcp=" + strconv.Itoa(echoPort), "--udp=" + strconv.Itoa(echoPort),
		"--http=" + strconv.Itoa(controlPort), "--drain-delay=" + w.drain.String()}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: w.name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(w.replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{deployLabel: w.name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeName:                      w.node,
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name: "server", Image: "nodeproxy.local/podagent", Command: command,
						ReadinessProbe: w.readiness, LivenessProbe: w.liveness,
					}},
				},
			},
		},
	}
}

// Addresses the Services get from cluster.LoadBalancerCIDR, which ext routes via node-a.
const (
	lbAllowedIP  = "203.0.113.10"
	lbExcludedIP = "203.0.113.11"
	externalIP   = "203.0.113.20"
	etpLocalIP   = "203.0.113.30"
	etpLocalAIP  = "203.0.113.31"
	// excludedRange is a loadBalancerSourceRanges entry that does not contain ext.
	excludedRange = "198.51.100.0/24"
)

// serviceDef is one Service of the feature tests: TCP and UDP port 80 to the echo port.
type serviceDef struct {
	name     string
	selector map[string]string
	ingress  string // LoadBalancer ingress IP set through the status, if any
	spec     func(*corev1.ServiceSpec)
}

func featureServices() []serviceDef {
	web := map[string]string{"app": "web"}
	loadBalancer := func(ranges ...string) func(*corev1.ServiceSpec) {
		return func(s *corev1.ServiceSpec) {
			s.Type, s.LoadBalancerSourceRanges = corev1.ServiceTypeLoadBalancer, ranges
		}
	}
	localLB := func(s *corev1.ServiceSpec) {
		s.Type, s.ExternalTrafficPolicy = corev1.ServiceTypeLoadBalancer, corev1.ServiceExternalTrafficPolicyLocal
	}
	return []serviceDef{
		{name: "clusterip", selector: web},
		{name: "nodeport", selector: web, spec: func(s *corev1.ServiceSpec) { s.Type = corev1.ServiceTypeNodePort }},
		{name: "lb-allowed", selector: web, ingress: lbAllowedIP, spec: loadBalancer(cluster.ExternalIP + "/32")},
		{name: "lb-excluded", selector: web, ingress: lbExcludedIP, spec: loadBalancer(excludedRange)},
		{name: "external-ip", selector: web, spec: func(s *corev1.ServiceSpec) { s.ExternalIPs = []string{externalIP} }},
		{name: "etp-local", selector: web, ingress: etpLocalIP, spec: localLB},
		{name: "etp-local-a", selector: map[string]string{"app": "web", "node": "a"}, ingress: etpLocalAIP, spec: localLB},
		{name: "itp-local", selector: web, spec: func(s *corev1.ServiceSpec) {
			s.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
		}},
		{name: "affinity", selector: web, spec: func(s *corev1.ServiceSpec) {
			s.Type, s.SessionAffinity = corev1.ServiceTypeNodePort, corev1.ServiceAffinityClientIP
		}},
		{name: "readiness", selector: map[string]string{"app": "ready"}},
		{name: "drain", selector: map[string]string{"app": "drain"}},
		{name: "scale", selector: map[string]string{"app": "scale"}},
		{name: "liveness", selector: map[string]string{"app": "live"}},
	}
}

func (d serviceDef) service() *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: d.name},
		Spec: corev1.ServiceSpec{
			Selector: d.selector,
			Ports: []corev1.ServicePort{
				{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: servicePort, TargetPort: intstr.FromInt32(echoPort)},
				{Name: "udp", Protocol: corev1.ProtocolUDP, Port: servicePort, TargetPort: intstr.FromInt32(echoPort)},
			},
		},
	}
	if d.spec != nil {
		d.spec(&svc.Spec)
	}
	return svc
}

// featureEnv is one mode's cluster state; it is read-only once set up, so parallel cases
// share it.
type featureEnv struct {
	c      *cluster.Cluster
	client kubernetes.Interface
	mode   featureMode
	ns     string
	// services by name, pods by workload name (as they were when all were ready).
	services map[string]*corev1.Service
	pods     map[string][]corev1.Pod
	// clientNS is the network namespace (a /proc path) of the client pod of each node.
	clientNS map[string]string
}

// startModeNodes (re)starts both nodes' proxy and pod agent in mode, concurrently, and stops
// them when the test ends.
func startModeNodes(t *testing.T, c *cluster.Cluster, mode string) []*cluster.Node {
	t.Helper()
	nodeNames := []string{cluster.NodeA, cluster.NodeB}
	nodes := make([]*cluster.Node, len(nodeNames))
	errs := make([]error, len(nodeNames))
	var wg sync.WaitGroup
	for i, name := range nodeNames {
		t.Cleanup(func() {
			if err := c.StopNode(name); err != nil {
				t.Errorf("stopping node %s: %v", name, err)
			}
		})
		wg.Go(func() {
			if errs[i] = c.StopNode(name); errs[i] == nil {
				nodes[i], errs[i] = c.StartNode(name, cluster.NodeOptions{Mode: mode})
			}
		})
	}
	wg.Wait()
	err := errors.Join(errs...)
	if errors.Is(err, cluster.ErrPrerequisite) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatalf("starting the nodes in %s mode: %v", mode, err)
	}
	return nodes
}

// setUpFeatureMode starts the nodes in the mode, creates the namespace with every workload and
// Service of the cases, sets the LoadBalancer ingress IPs and waits for all pods to be ready.
func setUpFeatureMode(t *testing.T, c *cluster.Cluster, mode featureMode) *featureEnv {
	t.Helper()
	nodes := startModeNodes(t, c, mode.name)
	podagent := filepath.Join(c.Dir, "bin", "podagent")
	if _, err := os.Stat(podagent); err != nil {
		t.Fatalf("the pod agent binary built by the harness: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := &featureEnv{c: c, client: c.Client(), mode: mode, services: map[string]*corev1.Service{}, clientNS: map[string]string{}}
	e.ns = createFeatureNamespace(ctx, t, e.client, "features-"+mode.name+"-")
	workloads := featureWorkloads()
	for _, w := range workloads {
		if _, err := e.client.AppsV1().Deployments(e.ns).Create(ctx, w.deployment(podagent), metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating deployment %s: %v", w.name, err)
		}
	}
	for _, d := range featureServices() {
		e.services[d.name] = createFeatureService(ctx, t, e.client, e.ns, d)
	}
	e.pods = waitForWorkloads(ctx, t, e.client, e.ns, workloads)
	for _, node := range []string{cluster.NodeA, cluster.NodeB} {
		client := e.pods["client-"+strings.TrimPrefix(node, "node-")][0]
		e.clientNS[node] = waitForSandbox(ctx, t, c, client)
	}
	dumpNodesOnFailure(t, c, mode.name, nodes)
	return e
}

// createFeatureService creates the Service and, for a LoadBalancer, publishes its ingress IP
// through the status as a cloud controller would.
func createFeatureService(ctx context.Context, t *testing.T, client kubernetes.Interface, ns string, d serviceDef) *corev1.Service {
	t.Helper()
	svc, err := client.CoreV1().Services(ns).Create(ctx, d.service(), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating service %s: %v", d.name, err)
	}
	if d.ingress == "" {
		return svc
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: d.ingress}}
	if svc, err = client.CoreV1().Services(ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting the load balancer ingress of service %s: %v", d.name, err)
	}
	return svc
}

// createFeatureNamespace creates a namespace and deletes it when the test ends, forcing its
// pods out (grace period 0) and waiting until it is gone, so the next mode starts clean.
func createFeatureNamespace(ctx context.Context, t *testing.T, client kubernetes.Interface, generateName string) string {
	t.Helper()
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: generateName},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := deleteNamespaceAndWait(client, ns.Name, time.Minute); err != nil {
			t.Error(err)
		}
	})
	return ns.Name
}

func deleteNamespaceAndWait(client kubernetes.Interface, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("deleting namespace %s: %w", name, err)
	}
	force := metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}
	if err := client.CoreV1().Pods(name).DeleteCollection(ctx, force, metav1.ListOptions{}); err != nil {
		return fmt.Errorf("deleting the pods of namespace %s: %w", name, err)
	}
	for {
		_, err := client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s still there after %v (last error %v)", name, timeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitForWorkloads waits until every workload has its replicas running and ready, and
// returns them by workload name, sorted by pod name.
func waitForWorkloads(ctx context.Context, t *testing.T, client kubernetes.Interface, ns string, workloads []workload) map[string][]corev1.Pod {
	t.Helper()
	var last map[string][]corev1.Pod
	for {
		list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err == nil {
			last = readyPodsByWorkload(list.Items)
			if allReplicasReady(last, workloads) {
				return last
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pods of namespace %s not all ready: %s", ns, describePods(last))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func readyPodsByWorkload(pods []corev1.Pod) map[string][]corev1.Pod {
	byWorkload := map[string][]corev1.Pod{}
	for _, pod := range pods {
		if pod.DeletionTimestamp == nil && pod.Status.PodIP != "" && podReady(&pod) {
			byWorkload[pod.Labels[deployLabel]] = append(byWorkload[pod.Labels[deployLabel]], pod)
		}
	}
	for _, list := range byWorkload {
		slices.SortFunc(list, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	}
	return byWorkload
}

func allReplicasReady(pods map[string][]corev1.Pod, workloads []workload) bool {
	for _, w := range workloads {
		if len(pods[w.name]) != int(w.replicas) {
			return false
		}
	}
	return true
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func describePods(pods map[string][]corev1.Pod) string {
	var parts []string
	for name, list := range pods {
		parts = append(parts, fmt.Sprintf("%s: %d ready", name, len(list)))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// sandboxName is the name of the sandbox the pod agent made for a pod: the node's namespace,
// a dash and the first eight hex digits of the UID (podagent/pods.SandboxName).
func sandboxName(c *cluster.Cluster, pod *corev1.Pod) string {
	return c.NodeNS(pod.Spec.NodeName) + "-" + strings.ReplaceAll(string(pod.UID), "-", "")[:8]
}

// waitForSandbox returns the network namespace path of the pod's sandbox once a process
// runs in it.
func waitForSandbox(ctx context.Context, t *testing.T, c *cluster.Cluster, pod corev1.Pod) string {
	t.Helper()
	name := sandboxName(c, &pod)
	for {
		path, err := sandboxNetnsPath(name)
		if err == nil {
			return path
		}
		select {
		case <-ctx.Done():
			t.Fatalf("sandbox of pod %s: %v", pod.Name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// names returns the pods' names.
func names(pods ...corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}

// workloadPods returns the pods of the named workloads.
func (e *featureEnv) workloadPods(workloads ...string) []corev1.Pod {
	var out []corev1.Pod
	for _, w := range workloads {
		out = append(out, e.pods[w]...)
	}
	return out
}

// clusterAddr is the Service's ClusterIP and port.
func (e *featureEnv) clusterAddr(service string) string {
	return net.JoinHostPort(e.services[service].Spec.ClusterIP, strconv.Itoa(servicePort))
}

// nodePortAddr is a node's address with the Service's NodePort for protocol.
func (e *featureEnv) nodePortAddr(service, nodeIP string, protocol corev1.Protocol) string {
	for _, p := range e.services[service].Spec.Ports {
		if p.Protocol == protocol {
			return net.JoinHostPort(nodeIP, strconv.Itoa(int(p.NodePort)))
		}
	}
	return net.JoinHostPort(nodeIP, "0")
}

// tcp and udp are requests from a namespace (member name or pod sandbox) to addr.
func (e *featureEnv) tcp(from, addr string) request { return tcpRequest(e.c, from, addr) }
func (e *featureEnv) udp(from, addr string) request { return udpRequest(e.c, from, addr) }

// podControl GETs a path of a pod's control port from its node and wants 200.
func (e *featureEnv) podControl(t *testing.T, pod corev1.Pod, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(controlPort)) + path
	code, err := httpStatus(ctx, e.c, pod.Spec.NodeName, url)
	if err != nil || code != 200 {
		t.Fatalf("GET %s of pod %s: status %d, error %v", path, pod.Name, code, err)
	}
}

// scaleWorkload sets a Deployment's replicas.
func (e *featureEnv) scaleWorkload(t *testing.T, name string, replicas int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := e.client.AppsV1().Deployments(e.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		d.Spec.Replicas = &replicas
		_, err = e.client.AppsV1().Deployments(e.ns).Update(ctx, d, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("scaling deployment %s to %d: %v", name, replicas, err)
	}
}
