package main

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// The bench node and its one real pod. The pod is a network namespace of the run joined to the
// node by a veth pair (node side benchpod0 with the pod CIDR's gateway address, pod side eth0);
// its servers are listeners of this process opened inside that namespace.
const (
	benchNode      = cluster.NodeA
	podIP          = "10.244.1.10"
	podGatewayCIDR = "10.244.1.1/24"
	podVethNode    = "benchpod0"
	echoPort       = 8080 // echoes every byte back
	sinkPort       = 8081 // reads until EOF, then answers the byte count as a decimal line
)

// podNamespace is the named network namespace of the bench pod; the run prefix makes the
// harness's Stop delete it and CheckLeaks report it.
func podNamespace(c *cluster.Cluster) string { return c.RunID + "-benchpod" }

// setUpPod creates the pod namespace, wires it to the bench node, routes the Service CIDR on
// the node to the pod and starts the echo and sink servers inside the pod.
//
// A node's own connection to a ClusterIP needs a route before the proxy's NAT sees it (a real
// node has a default route). Routed to the pod, whose namespace does not forward, packets a
// proxy does not (yet) rewrite die there and never reach the lan. (The kernel has no dummy
// interfaces here, which would be the usual sink.)
func setUpPod(c *cluster.Cluster) ([]net.Listener, error) {
	pod, node := podNamespace(c), c.NodeNS(benchNode)
	steps := [][]string{
		{"ip", "netns", "add", pod},
		{"ip", "-n", node, "link", "add", podVethNode, "type", "veth", "peer", "name", "eth0", "netns", pod},
		{"ip", "-n", node, "addr", "add", podGatewayCIDR, "dev", podVethNode},
		{"ip", "-n", node, "link", "set", podVethNode, "up"},
		{"ip", "-n", pod, "link", "set", "lo", "up"},
		{"ip", "-n", pod, "addr", "add", podIP + "/24", "dev", "eth0"},
		{"ip", "-n", pod, "link", "set", "eth0", "up"},
		{"ip", "-n", pod, "route", "add", "default", "via", strings.Split(podGatewayCIDR, "/")[0]},
		{"ip", "-n", node, "route", "add", cluster.ServiceCIDR, "via", podIP},
	}
	for _, argv := range steps {
		if err := runCommand(argv...); err != nil {
			return nil, fmt.Errorf("setting up the bench pod: %w", err)
		}
	}
	echo, err := c.Listen(pod, "tcp", fmt.Sprintf(":%d", echoPort))
	if err != nil {
		return nil, err
	}
	sink, err := c.Listen(pod, "tcp", fmt.Sprintf(":%d", sinkPort))
	if err != nil {
		_ = echo.Close()
		return nil, err
	}
	go serve(echo, func(conn net.Conn) { _, _ = io.Copy(conn, conn) })
	go serve(sink, func(conn net.Conn) {
		n, _ := io.Copy(io.Discard, conn)
		_, _ = fmt.Fprintf(conn, "%d\n", n)
	})
	return []net.Listener{echo, sink}, nil
}

// serve accepts connections until the listener closes, handling each in its own goroutine.
func serve(listener net.Listener, handle func(net.Conn)) {
	for {
		conn, err := listener.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			handle(conn)
		}()
	}
}

// resetNode makes the bench node fresh again for the next proxy: no nftables tables (which
// also holds the iptables-nft tables), no legacy iptables rules, no conntrack entries. The
// sysctls a proxy set stay (route_localnet and the like), as they would on a reused node.
func resetNode(c *cluster.Cluster) error {
	if _, err := c.Exec(benchNode, "nft", "flush", "ruleset"); err != nil {
		return fmt.Errorf("resetting the bench node: %w", err)
	}
	for _, table := range []string{"nat", "filter", "mangle"} {
		for _, tool := range []string{"iptables-legacy", "ip6tables-legacy"} {
			if _, err := c.Exec(benchNode, tool, "-t", table, "-F"); err == nil {
				_, _ = c.Exec(benchNode, tool, "-t", table, "-X")
			}
		}
	}
	if _, err := c.Exec(benchNode, "conntrack", "-F"); err != nil {
		klog.V(2).InfoS("Flushing conntrack on the bench node", "err", err)
	}
	return nil
}

// inNamespace runs fn on an OS thread switched into the named network namespace, so every
// socket fn creates is created there. The thread is switched back afterwards and only then
// unlocked: a thread exiting would SIGKILL the harness's processes it happened to start
// (they carry Pdeathsig). If switching back fails, the goroutine exits still locked and the
// runtime discards the thread, as the harness does.
func inNamespace(name string, fn func() error) error {
	result := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		original, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			result <- fmt.Errorf("getting the current namespace: %w", err)
			return
		}
		defer original.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			result <- fmt.Errorf("opening namespace %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			result <- fmt.Errorf("entering namespace %s: %w", name, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(original); err == nil {
			runtime.UnlockOSThread()
		}
		result <- fnErr
	}()
	return <-result
}
