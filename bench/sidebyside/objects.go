package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// The API objects of the benchmark: Services without selectors in benchNamespace, each with
// one EndpointSlice this program writes itself (name "<service>-bench").
const (
	benchNamespace = "bench"
	managedBy      = "nodeproxy-bench"
	// latencyService points at the real pod from its creation; it carries the echo port and
	// the sink port and is the target of the connect, throughput and connection-rate figures.
	latencyService = "svc-lat"
	// lastService is created last, pointing at the real pod: the first-sync target.
	lastService = "svc-last"
	// restartService is created while a proxy is stopped: the target after a restart.
	restartService = "svc-restart"
	// createWorkers is how many Services (and their slices) are created at a time.
	createWorkers = 16
)

// fillerName is the name of the i-th Service whose endpoints are fake.
func fillerName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// fakeEndpoints returns the m fake endpoints of the i-th filler Service: addresses in
// 10.244.100.0-10.244.255.255, inside the cluster CIDR but on no node, so nothing routes them.
// No traffic is ever sent to them: the benchmark only connects to Services on the real pod.
func fakeEndpoints(i, m int) []discoveryv1.Endpoint {
	endpoints := make([]discoveryv1.Endpoint, 0, m)
	for j := range m {
		n := i*m + j
		ip := fmt.Sprintf("10.244.%d.%d", 100+(n/250)%156, 1+n%250)
		endpoints = append(endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		})
	}
	return endpoints
}

// podEndpoints is the endpoint list of a Service on the real pod.
func podEndpoints() []discoveryv1.Endpoint {
	return []discoveryv1.Endpoint{{
		Addresses:  []string{podIP},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		NodeName:   ptr.To(benchNode),
	}}
}

// createNamespace creates benchNamespace.
func createNamespace(ctx context.Context, client kubernetes.Interface) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", benchNamespace, err)
	}
	return nil
}

// createService creates a Service without selector (port 80 -> echo, and 81 -> sink when
// withSink) and its EndpointSlice, and returns the ClusterIP.
func createService(ctx context.Context, client kubernetes.Interface, name string, withSink bool, endpoints []discoveryv1.Endpoint) (string, error) {
	ports := []corev1.ServicePort{{Name: "echo", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(echoPort)}}
	slicePorts := []discoveryv1.EndpointPort{{Name: ptr.To("echo"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(echoPort))}}
	if withSink {
		ports = append(ports, corev1.ServicePort{Name: "sink", Protocol: corev1.ProtocolTCP, Port: 81, TargetPort: intstr.FromInt32(sinkPort)})
		slicePorts = append(slicePorts, discoveryv1.EndpointPort{Name: ptr.To("sink"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(sinkPort))})
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Ports: ports},
	}
	created, err := client.CoreV1().Services(benchNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("creating Service %s: %w", name, err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name + "-bench",
			Labels: map[string]string{
				discoveryv1.LabelServiceName: name,
				discoveryv1.LabelManagedBy:   managedBy,
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       slicePorts,
		Endpoints:   endpoints,
	}
	if _, err := client.DiscoveryV1().EndpointSlices(benchNamespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating the EndpointSlice of %s: %w", name, err)
	}
	return created.Spec.ClusterIP, nil
}

// createFillers creates the filler Services first..last-1 with m fake endpoints each,
// createWorkers at a time, and returns their ClusterIPs by index.
func createFillers(ctx context.Context, client kubernetes.Interface, first, last, m int) (map[int]string, error) {
	indexes := make(chan int)
	var mu sync.Mutex
	ips := map[int]string{}
	var firstErr error
	var wg sync.WaitGroup
	for range createWorkers {
		wg.Go(func() {
			for i := range indexes {
				ip, err := createService(ctx, client, fillerName(i), false, fakeEndpoints(i, m))
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				ips[i] = ip
				mu.Unlock()
			}
		})
	}
	for i := first; i < last; i++ {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		indexes <- i
	}
	close(indexes)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = fmt.Errorf("creating filler Services: %w", ctx.Err())
	}
	return ips, firstErr
}

// setEndpoints replaces the endpoints of a Service's slice with one merge patch (one API
// write, as an EndpointSlice controller makes).
func setEndpoints(ctx context.Context, client kubernetes.Interface, service string, endpoints []discoveryv1.Endpoint) error {
	patch, err := json.Marshal(map[string]any{"endpoints": endpoints})
	if err != nil {
		return fmt.Errorf("encoding the endpoints of %s: %w", service, err)
	}
	_, err = client.DiscoveryV1().EndpointSlices(benchNamespace).Patch(ctx, service+"-bench", types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("patching the EndpointSlice of %s: %w", service, err)
	}
	return nil
}

// deleteService deletes a Service and its slice and waits (bounded) until the Service is
// gone, so a new one of the same name can be created. A missing Service is not an error.
func deleteService(ctx context.Context, client kubernetes.Interface, name string) error {
	err := client.DiscoveryV1().EndpointSlices(benchNamespace).Delete(ctx, name+"-bench", metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting the EndpointSlice of %s: %w", name, err)
	}
	err = client.CoreV1().Services(benchNamespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting Service %s: %w", name, err)
	}
	for range 100 {
		_, err := client.CoreV1().Services(benchNamespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("service %s still present 10 s after deletion", name)
}
