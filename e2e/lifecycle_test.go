package e2e

import (
	"context"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// itoa formats a port.
func itoa(port int32) string { return strconv.Itoa(int(port)) }

// readinessSlack is the time the readiness changes may take beyond the probe's own
// (periodSeconds × threshold): status write, EndpointSlice, proxy sync.
const readinessSlack = 2 * time.Second

// testReadiness: a pod whose readiness probe starts failing leaves the Service within
// periodSeconds × failureThreshold + 2 s, and returns within periodSeconds + 2 s of passing.
func testReadiness(t *testing.T, e *featureEnv) {
	pods := e.pods["ready"]
	target := pods[0]
	req := e.tcp(cluster.NodeB, e.clusterAddr("readiness"))
	expectAll(t, "readiness: both pods answer", req, names(pods...), reachTimeout)

	leaveBudget := time.Duration(readinessPeriod*readinessFailures)*time.Second + readinessSlack
	failed := time.Now()
	e.podControl(t, target, "/fail/readiness")
	last := waitUntilGone(t, "readiness: failing pod leaves", req, target.Name, false, 20, leaveBudget+10*time.Second)
	left := max(last.at.Sub(failed), 0)
	t.Logf("%s last answered %v after its readiness started failing (budget %v)", target.Name, left.Round(time.Millisecond), leaveBudget)
	if left > leaveBudget {
		t.Errorf("%s still answered %v after its readiness started failing, want at most %v", target.Name, left, leaveBudget)
	}

	returnBudget := time.Duration(readinessPeriod)*time.Second + readinessSlack
	recovered := time.Now()
	e.podControl(t, target, "/recover")
	back := waitUntilBack(t, "readiness: recovered pod returns", req, target.Name, returnBudget+10*time.Second)
	took := back.at.Sub(recovered)
	t.Logf("%s answered again %v after its readiness passed again (budget %v)", target.Name, took.Round(time.Millisecond), returnBudget)
	if took > returnBudget {
		t.Errorf("%s returned %v after recovering, want at most %v", target.Name, took, returnBudget)
	}
}

// testTerminatingPodDrains: a connection open to a pod keeps working while the deleted pod
// terminates (its server drains for drainDelay), new connections no longer reach it, and the
// connection ends when the pod's server exits.
func testTerminatingPodDrains(t *testing.T, e *featureEnv) {
	target := e.pods["drain"][0]
	from, addr := e.clientNS[cluster.NodeB], e.clusterAddr("drain")
	req := e.tcp(from, addr)
	expectAll(t, "drain: the pod answers", req, names(target), reachTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := openEcho(ctx, e.c, from, addr)
	if err != nil {
		t.Fatalf("opening a connection to the drain Service: %v", err)
	}
	defer conn.Close()
	if err := conn.roundTrip("before deletion"); err != nil {
		t.Fatal(err)
	}

	if err := e.client.CoreV1().Pods(e.ns).Delete(ctx, target.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting pod %s: %v", target.Name, err)
	}
	deleted := time.Now()
	waitUntilGone(t, "drain: new connections avoid the terminating pod", req, target.Name, true, 10, reachTimeout)
	for i := 0; i == 0 || time.Since(deleted) < drainDelay-time.Second; i++ {
		if err := conn.roundTrip("while terminating " + strconv.Itoa(i)); err != nil {
			t.Fatalf("the open connection broke %v after the pod's deletion: %v", time.Since(deleted).Round(time.Millisecond), err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	pod, err := e.client.CoreV1().Pods(e.ns).Get(ctx, target.Name, metav1.GetOptions{})
	if err != nil || pod.DeletionTimestamp == nil {
		t.Fatalf("pod %s should still be terminating (the echo checks ran while it was): %v", target.Name, err)
	}
	if err := conn.waitClosed(drainDelay + drainGrace*time.Second); err != nil {
		t.Errorf("the connection should end when the pod's server exits: %v", err)
	}
}

// testScaleToZero: once a Deployment is scaled to zero its Service refuses connections (in
// userspace mode the connection is accepted and reset: the mode does not reject).
func testScaleToZero(t *testing.T, e *featureEnv) {
	target := e.pods["scale"][0]
	addr := e.clusterAddr("scale")
	sources := []source{{"a pod on node-a", e.clientNS[cluster.NodeA]}, {"node-a", cluster.NodeA}}
	for _, s := range sources {
		expectAll(t, "scale: the pod answers from "+s.name, e.tcp(s.ns, addr), names(target), reachTimeout)
	}
	e.scaleWorkload(t, "scale", 0)
	// The pod's own kernel refuses connections once its server exits; wait until the pod is
	// gone, so what is checked next is the proxy's answer for a Service without endpoints.
	e.waitForNoPods(t, "scale", reachTimeout)
	accept, how := isRefused, "connection refused"
	if !e.mode.rejects {
		accept, how = isReset, "a reset after accepting (userspace mode does not reject, userspace/README.md)"
	}
	for _, s := range sources {
		expectFailure(t, "scaled to zero, from "+s.name, e.tcp(s.ns, addr), accept, how, true, reachTimeout)
	}
}

// testLivenessRestart: a failing liveness probe restarts the container (restartCount grows)
// and the restarted container serves through the Service again.
func testLivenessRestart(t *testing.T, e *featureEnv) {
	target := e.pods["live"][0]
	req := e.tcp(cluster.NodeB, e.clusterAddr("liveness"))
	expectAll(t, "liveness: the pod answers", req, names(target), reachTimeout)
	before := restartCount(&target)
	e.podControl(t, target, "/fail/liveness")
	failed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		pod, err := e.client.CoreV1().Pods(e.ns).Get(ctx, target.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			t.Fatalf("pod %s is gone; a failing liveness probe should restart its container, not the pod", target.Name)
		}
		if err == nil && restartCount(pod) > before {
			t.Logf("%s restarted %v after its liveness started failing", target.Name, time.Since(failed).Round(time.Millisecond))
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod %s: restartCount still %d 30s after its liveness started failing", target.Name, before)
		case <-time.After(200 * time.Millisecond):
		}
	}
	expectAll(t, "liveness: the restarted container answers", req, names(target), reachTimeout)
}

func restartCount(pod *corev1.Pod) int32 {
	var n int32
	for _, s := range pod.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

// waitForNoPods waits until no pod of the workload is left in the API (the pod agent deletes
// a pod's object once its containers and sandbox are gone).
func (e *featureEnv) waitForNoPods(t *testing.T, workload string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	selector := metav1.ListOptions{LabelSelector: deployLabel + "=" + workload}
	for {
		list, err := e.client.CoreV1().Pods(e.ns).List(ctx, selector)
		if err == nil && len(list.Items) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pods of %s still there after %v (last error %v)", workload, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
