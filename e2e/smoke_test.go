package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// TestControlPlane checks that the shared control plane serves the API, allocates ClusterIPs
// from the service range and runs the EndpointSlice controller.
func TestControlPlane(t *testing.T) {
	c := sharedCluster(t)
	client := c.Client()

	t.Run("kubernetes service", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		svc, err := client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("getting default/kubernetes: %v", err)
		}
		if svc.Spec.ClusterIP != cluster.KubernetesIP {
			t.Errorf("default/kubernetes ClusterIP = %s, want %s", svc.Spec.ClusterIP, cluster.KubernetesIP)
		}
		waitForSlices(ctx, t, client, metav1.NamespaceDefault, "kubernetes", func(slices []discoveryv1.EndpointSlice) bool {
			return hasEndpoint(slices, cluster.ControlPlaneIP, 6443, true)
		})
	})

	t.Run("service gets a slice for its ready pod", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		ns := createNamespace(ctx, t, client, "smoke-")
		if err := c.RegisterNode(ctx, cluster.NodeA, cluster.DefaultZone); err != nil {
			t.Fatal(err)
		}
		svc := createService(ctx, t, client, ns, "web", map[string]string{"app": "web"})
		if !netip.MustParsePrefix(cluster.ServiceCIDR).Contains(netip.MustParseAddr(svc.Spec.ClusterIP)) {
			t.Errorf("ClusterIP %s is outside %s", svc.Spec.ClusterIP, cluster.ServiceCIDR)
		}
		pod := createPod(ctx, t, client, ns, "web-1", map[string]string{"app": "web"}, cluster.NodeA)
		setPodStatus(ctx, t, client, pod, "10.244.1.5", corev1.ConditionTrue)
		waitForSlices(ctx, t, client, ns, svc.Name, func(slices []discoveryv1.EndpointSlice) bool {
			return hasEndpoint(slices, "10.244.1.5", 8080, true)
		})

		// The controller follows readiness: the same pod turning not ready stays listed, not ready.
		pod, err := client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("getting pod: %v", err)
		}
		setPodStatus(ctx, t, client, pod, "10.244.1.5", corev1.ConditionFalse)
		waitForSlices(ctx, t, client, ns, svc.Name, func(slices []discoveryv1.EndpointSlice) bool {
			return hasEndpoint(slices, "10.244.1.5", 8080, false)
		})
	})
}

func createNamespace(ctx context.Context, t *testing.T, client kubernetes.Interface, generateName string) string {
	t.Helper()
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: generateName},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("deleting namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

func createService(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, name string, selector map[string]string) *corev1.Service {
	t.Helper()
	svc, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080),
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating service %s/%s: %v", ns, name, err)
	}
	return svc
}

// createPod creates a pod already bound to node (there is no scheduler in the e2e cluster).
func createPod(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, name string, labels map[string]string, node string) *corev1.Pod {
	t.Helper()
	pod, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "server", Image: "nodeproxy.local/podagent"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	return pod
}

// setPodStatus does what a kubelet would: Running, the pod IP, and the Ready condition.
func setPodStatus(ctx context.Context, t *testing.T, client kubernetes.Interface, pod *corev1.Pod, ip string, ready corev1.ConditionStatus) {
	t.Helper()
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = ip
	pod.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	pod.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodReady, Status: ready, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: ready, LastTransitionTime: now},
	}
	if _, err := client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating the status of pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

// waitForSlices polls the EndpointSlices of a Service until done accepts them or ctx ends.
func waitForSlices(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, service string, done func([]discoveryv1.EndpointSlice) bool) {
	t.Helper()
	selector := metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service}
	var last []discoveryv1.EndpointSlice
	for {
		list, err := client.DiscoveryV1().EndpointSlices(ns).List(ctx, selector)
		if err == nil {
			last = list.Items
			if done(last) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("EndpointSlices of %s/%s never matched; last seen: %s", ns, service, describeSlices(last))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// hasEndpoint reports whether a slice lists address with port and the given readiness.
func hasEndpoint(slices []discoveryv1.EndpointSlice, address string, port int32, ready bool) bool {
	for _, slice := range slices {
		if !slicePortIs(slice, port) {
			continue
		}
		for _, endpoint := range slice.Endpoints {
			isReady := endpoint.Conditions.Ready != nil && *endpoint.Conditions.Ready
			for _, a := range endpoint.Addresses {
				if a == address && isReady == ready {
					return true
				}
			}
		}
	}
	return false
}

func slicePortIs(slice discoveryv1.EndpointSlice, port int32) bool {
	for _, p := range slice.Ports {
		if p.Port != nil && *p.Port == port {
			return true
		}
	}
	return false
}

func describeSlices(slices []discoveryv1.EndpointSlice) string {
	if len(slices) == 0 {
		return "none"
	}
	var out string
	for _, slice := range slices {
		out += fmt.Sprintf("[%s ports=%d", slice.Name, len(slice.Ports))
		for _, e := range slice.Endpoints {
			out += fmt.Sprintf(" %v ready=%v", e.Addresses, e.Conditions.Ready != nil && *e.Conditions.Ready)
		}
		out += "]"
	}
	return out
}
