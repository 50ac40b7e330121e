// Command podagent is a kubelet stand-in for end-to-end tests: `run` registers a node and
// runs its pods as processes in network namespaces, `serve` is the pods' test server,
// and `cleanup` removes what a crashed agent left behind.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/nodeproxy/nodeproxy/podagent/node"
	"github.com/nodeproxy/nodeproxy/podagent/pods"
	"github.com/nodeproxy/nodeproxy/podagent/serve"
)

const usage = `usage:
  podagent run --kubeconfig=FILE --node-name=NAME --node-ip=IP [--node-ip6=IP] --pod-cidr=CIDR [--pod-cidr6=CIDR] [--bridge=cbr0] [--zone=ZONE]
  podagent serve [--tcp=PORTS] [--udp=PORTS] [--http=PORT] [--drain-delay=DURATION]
  podagent cleanup --node-name=NAME [--netns-prefix=PREFIX]`

const prefixHelp = "pod namespaces are named PREFIX-<8 hex> (default: the name of the named network namespace the agent runs in, else the node name)"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	code, err := 2, errors.New(usage)
	if len(os.Args) > 1 {
		fs := flag.NewFlagSet("podagent "+os.Args[1], flag.ContinueOnError)
		klog.InitFlags(fs)
		switch os.Args[1] {
		case "run":
			code, err = 0, runAgent(ctx, fs, os.Args[2:])
		case "serve":
			code, err = runServe(ctx, fs, os.Args[2:])
		case "cleanup":
			code, err = 0, runCleanup(fs, os.Args[2:])
		}
	}
	klog.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "podagent:", err)
		code = max(code, 1)
	}
	os.Exit(code)
}

func runAgent(ctx context.Context, fs *flag.FlagSet, args []string) error {
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file of the API server")
	nodeName := fs.String("node-name", "", "name of the Node to register")
	nodeIP := fs.String("node-ip", "", "the node's InternalIP")
	nodeIP6 := fs.String("node-ip6", "", "the node's IPv6 InternalIP, if dual-stack")
	podCIDR := fs.String("pod-cidr", "", "the node's pod CIDR")
	podCIDR6 := fs.String("pod-cidr6", "", "the node's IPv6 pod CIDR, if dual-stack")
	bridge := fs.String("bridge", "cbr0", "the pod bridge (created if missing)")
	zone := fs.String("zone", "", "value of the topology.kubernetes.io/zone label")
	logDir := fs.String("log-dir", "", "directory for container logs (default $TMPDIR/podagent-NODE)")
	maxGrace := fs.Duration("max-grace-period", 30*time.Second, "upper bound of pod termination grace periods")
	prefix := fs.String("netns-prefix", "", prefixHelp)
	if err := fs.Parse(args); err != nil {
		return err
	}
	nodeIPs, err := parseAll(netip.ParseAddr, *nodeIP, *nodeIP6)
	cidrs, err2 := parseAll(netip.ParsePrefix, *podCIDR, *podCIDR6)
	switch {
	case *nodeName == "" || *kubeconfig == "" || *nodeIP == "" || *podCIDR == "":
		return errors.New("--kubeconfig, --node-name, --node-ip and --pod-cidr are required")
	case err != nil || err2 != nil:
		return fmt.Errorf("parsing node IPs and pod CIDRs: %w", errors.Join(err, err2))
	case *podCIDR6 != "" && !cidrs[1].Addr().Is6():
		return errors.New("--pod-cidr6 must be an IPv6 CIDR")
	}
	*prefix = cmp.Or(*prefix, pods.DefaultPrefix(*nodeName))
	*logDir = cmp.Or(*logDir, filepath.Join(os.TempDir(), "podagent-"+*nodeName))
	var client *kubernetes.Clientset
	restConfig, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err == nil {
		client, err = kubernetes.NewForConfig(restConfig)
	}
	if err != nil {
		return fmt.Errorf("creating API client from %s: %w", *kubeconfig, err)
	}
	if err := pods.Cleanup(*prefix); err != nil {
		klog.ErrorS(err, "Removing leftovers of an earlier agent")
	}
	rt, err := pods.NewNetnsRuntime(netns.None(), *bridge, cidrs)
	if err != nil {
		return err
	}
	nodeCfg := node.Config{Name: *nodeName, Zone: *zone}
	for i := range nodeIPs {
		nodeCfg.IPs = append(nodeCfg.IPs, nodeIPs[i].String())
	}
	for _, c := range cidrs {
		nodeCfg.PodCIDRs = append(nodeCfg.PodCIDRs, c.Masked().String())
	}
	manager, err := pods.NewManager(pods.Config{
		NodeName: *nodeName, SandboxPrefix: *prefix, NodeIPs: nodeCfg.IPs, PodCIDRs: cidrs, Client: client,
		Runtime: rt, LogDir: *logDir, MaxGracePeriod: *maxGrace,
	})
	if err == nil { // register, retrying every 2 s until the API server answers
		err = wait.PollUntilContextCancel(ctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
			if err := node.Register(ctx, client, nodeCfg); err != nil {
				klog.ErrorS(err, "Registering node; retrying", "node", *nodeName)
				return false, nil
			}
			klog.InfoS("Node registered", "node", *nodeName)
			return true, nil
		})
	}
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		err = nil // stopped before the API server answered
	}
	if err == nil {
		go node.Heartbeat(ctx, client, nodeCfg)
		err = manager.Run(ctx)
	}
	klog.InfoS("Stopping: removing pod sandboxes", "prefix", *prefix)
	return errors.Join(err, rt.Close(), pods.Cleanup(*prefix))
}

// parseAll parses the non-empty values.
func parseAll[T any](parse func(string) (T, error), values ...string) ([]T, error) {
	var out []T
	for _, v := range values {
		if v != "" {
			t, err := parse(v)
			if err != nil {
				return nil, err
			}
			out = append(out, t)
		}
	}
	return out, nil
}

func runServe(ctx context.Context, fs *flag.FlagSet, args []string) (int, error) {
	tcp := fs.String("tcp", "", "comma-separated TCP echo ports")
	udp := fs.String("udp", "", "comma-separated UDP echo ports")
	httpPort := fs.Int("http", 0, "HTTP port (0: none)")
	drain := fs.Duration("drain-delay", 0, "how long to keep serving after SIGTERM")
	name := fs.String("name", serve.PodName(), "name in answers (default $POD_NAME, $HOSTNAME or the host name)")
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	tcpPorts, err := parseAll(strconv.Atoi, strings.Split(*tcp, ",")...)
	udpPorts, err2 := parseAll(strconv.Atoi, strings.Split(*udp, ",")...)
	if err = errors.Join(err, err2); err != nil {
		return 2, fmt.Errorf("parsing ports: %w", err)
	}
	return serve.Run(ctx, serve.Config{Name: *name, TCPPorts: tcpPorts, UDPPorts: udpPorts, HTTPPort: *httpPort, DrainDelay: *drain})
}

func runCleanup(fs *flag.FlagSet, args []string) error {
	nodeName := fs.String("node-name", "", "node whose pod namespaces, veths and processes to remove")
	prefix := fs.String("netns-prefix", "", prefixHelp)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *prefix == "" && *nodeName == "" {
		return errors.New("--node-name or --netns-prefix is required")
	}
	return pods.Cleanup(cmp.Or(*prefix, pods.DefaultPrefix(*nodeName)))
}
