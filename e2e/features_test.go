package e2e

import (
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// featureMode is a proxy mode and what of the cases it can do (userspace/README.md).
type featureMode struct {
	name string
	// preservesClientIP: the endpoint sees the real client address.
	preservesClientIP bool
	// enforcesSourceRanges: loadBalancerSourceRanges drop other sources.
	enforcesSourceRanges bool
	// rejects: a Service without endpoints refuses connections (ICMP port unreachable);
	// otherwise the connection is accepted and reset.
	rejects bool
}

var featureModes = []featureMode{
	{name: "nftables", preservesClientIP: true, enforcesSourceRanges: true, rejects: true},
	{name: "iptables", preservesClientIP: true, enforcesSourceRanges: true, rejects: true},
	{name: "userspace"},
}

// Reasons for the cases the userspace mode cannot satisfy (userspace/README.md).
const (
	noClientIPReason     = "userspace mode: the endpoint always sees the node as the client (userspace/README.md)"
	noSourceRangesReason = "userspace mode: loadBalancerSourceRanges are not enforced (userspace/README.md)"
)

// reachTimeout bounds the wait for a Service to answer as expected; it covers the proxy's
// first sync of a mode's Services.
const reachTimeout = 30 * time.Second

// featureCase is one end-to-end case, run in parallel with the others of its mode.
type featureCase struct {
	name string
	run  func(t *testing.T, e *featureEnv)
}

var featureCases = []featureCase{
	{"ClusterIP TCP", testClusterIPTCP},
	{"ClusterIP UDP", testClusterIPUDP},
	{"NodePort", testNodePort},
	{"LoadBalancer allowed source", testLoadBalancerAllowed},
	{"LoadBalancer excluded source dropped", testLoadBalancerExcluded},
	{"externalIPs", testExternalIPs},
	{"eTP Local only local pods", testExternalLocalOnlyLocal},
	{"eTP Local client address", testExternalLocalClientAddress},
	{"eTP Local health check node port", testExternalLocalHealthCheck},
	{"iTP Local", testInternalLocal},
	{"sessionAffinity ClientIP", testSessionAffinity},
	{"readiness failure leaves and returns", testReadiness},
	{"terminating pod keeps open connection", testTerminatingPodDrains},
	{"scale to zero", testScaleToZero},
	{"liveness failure restarts", testLivenessRestart},
}

// TestServiceFeatures runs the Service cases against real Deployments and Services in each
// proxy mode, one mode after the other on the shared cluster: both nodes are restarted in
// the mode, all Services of the mode are created at once in a namespace of their own, and
// the cases run concurrently from pods, nodes and the outside client.
func TestServiceFeatures(t *testing.T) {
	c := sharedCluster(t)
	began := time.Now()
	for _, mode := range featureModes {
		t.Run(mode.name, func(t *testing.T) {
			modeBegan := time.Now()
			e := setUpFeatureMode(t, c, mode)
			t.Logf("%s: nodes, workloads and Services ready in %v", mode.name, time.Since(modeBegan).Round(time.Millisecond))
			t.Run("cases", func(t *testing.T) {
				// The cases mostly wait on the network and the control plane, so they all run
				// at once rather than -parallel (GOMAXPROCS) at a time.
				var wg sync.WaitGroup
				for _, fc := range featureCases {
					wg.Go(func() { t.Run(fc.name, func(t *testing.T) { fc.run(t, e) }) })
				}
				wg.Wait()
			})
			t.Logf("%s: cases done %v after the mode began", mode.name, time.Since(modeBegan).Round(time.Millisecond))
		})
	}
	t.Logf("all modes (cleanups included but the last one's) in %v", time.Since(began).Round(time.Millisecond))
}

// source is where a request starts: a topology member or a pod sandbox.
type source struct{ name, ns string }

// insideSources are a pod on each node and each node itself.
func (e *featureEnv) insideSources() []source {
	return []source{
		{"pod on node-a", e.clientNS[cluster.NodeA]},
		{"pod on node-b", e.clientNS[cluster.NodeB]},
		{"node-a", cluster.NodeA},
		{"node-b", cluster.NodeB},
	}
}

// testClusterIPTCP: every web pod answers the ClusterIP from pods, nodes and ext (whose route
// to the service range goes via node-a).
func testClusterIPTCP(t *testing.T, e *featureEnv) {
	addr := e.clusterAddr("clusterip")
	want := names(e.workloadPods("web-a", "web-b")...)
	for _, s := range append(e.insideSources(), source{"ext via node-a", cluster.External}) {
		expectAll(t, "ClusterIP TCP from "+s.name, e.tcp(s.ns, addr), want, reachTimeout)
	}
}

func testClusterIPUDP(t *testing.T, e *featureEnv) {
	addr := e.clusterAddr("clusterip")
	want := names(e.workloadPods("web-a", "web-b")...)
	for _, s := range append(e.insideSources(), source{"ext via node-a", cluster.External}) {
		expectAll(t, "ClusterIP UDP from "+s.name, e.udp(s.ns, addr), want, reachTimeout)
	}
}

// testNodePort: every web pod answers each node's NodePort (TCP and UDP) from ext, a pod and
// a node (its own NodePort).
func testNodePort(t *testing.T, e *featureEnv) {
	want := names(e.workloadPods("web-a", "web-b")...)
	for _, nodeIP := range []string{cluster.NodeAIP, cluster.NodeBIP} {
		tcp, udp := e.nodePortAddr("nodeport", nodeIP, corev1.ProtocolTCP), e.nodePortAddr("nodeport", nodeIP, corev1.ProtocolUDP)
		expectAll(t, "NodePort TCP from ext to "+tcp, e.tcp(cluster.External, tcp), want, reachTimeout)
		expectAll(t, "NodePort UDP from ext to "+udp, e.udp(cluster.External, udp), want, reachTimeout)
	}
	toB := e.nodePortAddr("nodeport", cluster.NodeBIP, corev1.ProtocolTCP)
	expectAll(t, "NodePort TCP from a pod on node-a to "+toB, e.tcp(e.clientNS[cluster.NodeA], toB), want, reachTimeout)
	own := e.nodePortAddr("nodeport", cluster.NodeAIP, corev1.ProtocolTCP)
	expectAll(t, "NodePort TCP from node-a to its own "+own, e.tcp(cluster.NodeA, own), want, reachTimeout)
}

// testLoadBalancerAllowed: the ingress IP of a Service whose source ranges contain ext
// answers ext, TCP and UDP.
func testLoadBalancerAllowed(t *testing.T, e *featureEnv) {
	want := names(e.workloadPods("web-a", "web-b")...)
	addr := lbAllowedIP + ":80"
	expectAll(t, "LoadBalancer TCP from ext (allowed)", e.tcp(cluster.External, addr), want, reachTimeout)
	expectAll(t, "LoadBalancer UDP from ext (allowed)", e.udp(cluster.External, addr), want, reachTimeout)
}

// testLoadBalancerExcluded: the ingress IP of a Service whose source ranges exclude ext drops
// ext's packets (the dial times out; before the first sync it is unreachable instead).
func testLoadBalancerExcluded(t *testing.T, e *featureEnv) {
	if !e.mode.enforcesSourceRanges {
		t.Skip(noSourceRangesReason)
	}
	expectFailure(t, "LoadBalancer from ext (excluded)", e.tcp(cluster.External, lbExcludedIP+":80"),
		isTimeout, "a timeout (dropped)", false, reachTimeout)
}

// testExternalIPs: the externalIP answers ext, a pod on the other node and node-a itself.
func testExternalIPs(t *testing.T, e *featureEnv) {
	want := names(e.workloadPods("web-a", "web-b")...)
	addr := externalIP + ":80"
	for _, s := range []source{{"ext", cluster.External}, {"pod on node-b", e.clientNS[cluster.NodeB]}, {"node-a", cluster.NodeA}} {
		expectAll(t, "externalIP TCP from "+s.name, e.tcp(s.ns, addr), want, reachTimeout)
	}
	expectAll(t, "externalIP UDP from ext", e.udp(cluster.External, addr), want, reachTimeout)
}

// testExternalLocalOnlyLocal: with externalTrafficPolicy Local, ext reaching a node gets
// only that node's pods, and a node without local pods does not answer.
func testExternalLocalOnlyLocal(t *testing.T, e *featureEnv) {
	onA, onB := names(e.pods["web-a"]...), names(e.pods["web-b"]...)
	expectAll(t, "eTP Local NodePort of node-a from ext",
		e.tcp(cluster.External, e.nodePortAddr("etp-local", cluster.NodeAIP, corev1.ProtocolTCP)), onA, reachTimeout)
	expectAll(t, "eTP Local NodePort of node-b from ext",
		e.tcp(cluster.External, e.nodePortAddr("etp-local", cluster.NodeBIP, corev1.ProtocolTCP)), onB, reachTimeout)
	expectAll(t, "eTP Local UDP NodePort of node-b from ext",
		e.udp(cluster.External, e.nodePortAddr("etp-local", cluster.NodeBIP, corev1.ProtocolUDP)), onB, reachTimeout)
	expectAll(t, "eTP Local ingress IP (via node-a) from ext", e.tcp(cluster.External, etpLocalIP+":80"), onA, reachTimeout)

	expectAll(t, "eTP Local (pods on node-a only) NodePort of node-a from ext",
		e.tcp(cluster.External, e.nodePortAddr("etp-local-a", cluster.NodeAIP, corev1.ProtocolTCP)), onA, reachTimeout)
	accept, how := isTimeout, "a timeout (dropped)"
	if !e.mode.rejects {
		accept, how = isReset, "a reset (userspace resets outside clients without local endpoints)"
	}
	expectFailure(t, "eTP Local (pods on node-a only) NodePort of node-b from ext",
		e.tcp(cluster.External, e.nodePortAddr("etp-local-a", cluster.NodeBIP, corev1.ProtocolTCP)), accept, how, false, reachTimeout)
}

// testExternalLocalClientAddress: the pods of an externalTrafficPolicy Local Service see ext's
// own address, through either node's NodePort and the ingress IP, TCP and UDP.
func testExternalLocalClientAddress(t *testing.T, e *featureEnv) {
	if !e.mode.preservesClientIP {
		t.Skip(noClientIPReason)
	}
	checks := []struct {
		what string
		req  request
	}{
		{"NodePort of node-a", e.tcp(cluster.External, e.nodePortAddr("etp-local", cluster.NodeAIP, corev1.ProtocolTCP))},
		{"NodePort of node-b", e.tcp(cluster.External, e.nodePortAddr("etp-local", cluster.NodeBIP, corev1.ProtocolTCP))},
		{"UDP NodePort of node-a", e.udp(cluster.External, e.nodePortAddr("etp-local", cluster.NodeAIP, corev1.ProtocolUDP))},
		{"ingress IP", e.tcp(cluster.External, etpLocalIP+":80")},
	}
	all := names(e.workloadPods("web-a", "web-b")...)
	for _, check := range checks {
		for _, r := range expectOnly(t, "eTP Local "+check.what+" from ext", check.req, all, 3, reachTimeout) {
			if r.client.Addr().String() != cluster.ExternalIP {
				t.Errorf("eTP Local %s: %s saw client %s, want %s", check.what, r.pod, r.client, cluster.ExternalIP)
			}
		}
	}
}

// testExternalLocalHealthCheck: the health check node port answers 200 on a node with local
// pods and 503 on a node without.
func testExternalLocalHealthCheck(t *testing.T, e *featureEnv) {
	url := func(service, nodeIP string) string {
		port := e.services[service].Spec.HealthCheckNodePort
		if port == 0 {
			t.Fatalf("service %s has no healthCheckNodePort", service)
		}
		return "http://" + nodeIP + ":" + itoa(port) + "/"
	}
	expectHTTPStatus(t, e.c, cluster.External, url("etp-local-a", cluster.NodeAIP), 200, reachTimeout)
	expectHTTPStatus(t, e.c, cluster.External, url("etp-local-a", cluster.NodeBIP), 503, reachTimeout)
	expectHTTPStatus(t, e.c, cluster.External, url("etp-local", cluster.NodeAIP), 200, reachTimeout)
	expectHTTPStatus(t, e.c, cluster.External, url("etp-local", cluster.NodeBIP), 200, reachTimeout)
}

// testInternalLocal: with internalTrafficPolicy Local, pods and nodes reach only the pods of
// their own node through the ClusterIP.
func testInternalLocal(t *testing.T, e *featureEnv) {
	addr := e.clusterAddr("itp-local")
	onA, onB := names(e.pods["web-a"]...), names(e.pods["web-b"]...)
	expectAll(t, "iTP Local from a pod on node-a", e.tcp(e.clientNS[cluster.NodeA], addr), onA, reachTimeout)
	expectAll(t, "iTP Local from a pod on node-b", e.tcp(e.clientNS[cluster.NodeB], addr), onB, reachTimeout)
	expectAll(t, "iTP Local UDP from a pod on node-b", e.udp(e.clientNS[cluster.NodeB], addr), onB, reachTimeout)
	expectAll(t, "iTP Local from node-a", e.tcp(cluster.NodeA, addr), onA, reachTimeout)
	expectAll(t, "iTP Local from node-b", e.tcp(cluster.NodeB, addr), onB, reachTimeout)
}

// testSessionAffinity: with sessionAffinity ClientIP, every connection of a client goes to
// the same pod, through the ClusterIP and a NodePort.
func testSessionAffinity(t *testing.T, e *featureEnv) {
	all := names(e.workloadPods("web-a", "web-b")...)
	addr := e.clusterAddr("affinity")
	checks := []source{{"a pod on node-a", e.clientNS[cluster.NodeA]}, {"node-b", cluster.NodeB}}
	for _, s := range checks {
		expectSamePod(t, "affinity ClusterIP from "+s.name, expectOnly(t, "affinity from "+s.name, e.tcp(s.ns, addr), all, 12, reachTimeout))
	}
	np := e.nodePortAddr("affinity", cluster.NodeBIP, corev1.ProtocolTCP)
	expectSamePod(t, "affinity NodePort from ext", expectOnly(t, "affinity NodePort from ext", e.tcp(cluster.External, np), all, 12, reachTimeout))
}

func expectSamePod(t *testing.T, what string, replies []reply) {
	t.Helper()
	for _, r := range replies {
		if r.pod != replies[0].pod {
			t.Errorf("%s: answered by %s and %s, want one pod", what, replies[0].pod, r.pod)
			return
		}
	}
}
