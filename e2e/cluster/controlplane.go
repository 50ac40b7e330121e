package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Ports of the control plane components, all on ControlPlaneIP in the cp namespace.
const (
	etcdClientPort        = "2379"
	apiServerPort         = "6443"
	controllerManagerPort = "10257"
)

// controllers are the kube-controller-manager controllers the e2e tests need. Left out on
// purpose: node-lifecycle (our Nodes have no kubelet, so it would mark them NotReady, taint
// them and mark their pods NotReady), node-ipam (the harness sets pod CIDRs), pod GC (it
// deletes pods of unknown nodes), the legacy endpoints controller (the proxy reads only
// EndpointSlices) and everything about tokens, volumes, jobs and certificates.
var controllers = []string{
	"endpointslice-controller",
	"endpointslice-mirroring-controller",
	"deployment-controller",
	"replicaset-controller",
	"namespace-controller",
	"garbage-collector-controller",
	"service-cidr-controller",
}

// disabledAdmissionPlugins are default-on admission plugins the harness turns off:
// ServiceAccount (pods need no token, and it would reject pods until the default service
// account exists) and TaintNodesByCondition (it taints new Nodes not-ready).
var disabledAdmissionPlugins = []string{"ServiceAccount", "TaintNodesByCondition"}

// startControlPlane starts etcd, kube-apiserver and kube-controller-manager in the cp
// namespace, each after the previous one is ready.
func (c *Cluster) startControlPlane() error {
	if err := c.startEtcd(); err != nil {
		return err
	}
	if err := c.startAPIServer(); err != nil {
		return err
	}
	return c.startControllerManager()
}

func (c *Cluster) startEtcd() error {
	c.etcdDir = filepath.Join(c.Dir, "etcd")
	// etcd fsyncs its WAL; on tmpfs that costs nothing, and the data is throwaway.
	if info, err := os.Stat("/dev/shm"); err == nil && info.IsDir() {
		c.etcdDir = filepath.Join("/dev/shm", c.RunID+"-etcd")
	}
	clientURL := "http://" + ControlPlaneIP + ":" + etcdClientPort
	peerURL := "http://127.0.0.1:2380"
	process, err := c.StartProcess(ControlPlane, "etcd", c.opts.EtcdPath,
		"--name=cp",
		"--data-dir="+c.etcdDir,
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=cp="+peerURL,
		"--logger=zap",
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	client := c.HTTPClient(ControlPlane, 2*time.Second)
	return c.waitReady(process, func(ctx context.Context) error {
		return httpCheck(ctx, client, clientURL+"/health", `"health":"true"`)
	})
}

func (c *Cluster) startAPIServer() error {
	args := []string{
		filepath.Join(c.opts.BinDir, "kube-apiserver"),
		"--etcd-servers=http://" + ControlPlaneIP + ":" + etcdClientPort,
		"--bind-address=" + ControlPlaneIP,
		"--advertise-address=" + ControlPlaneIP,
		"--secure-port=" + apiServerPort,
		"--cert-dir=" + filepath.Join(c.Dir, "pki"),
		"--tls-cert-file=" + c.pki.ServingCert,
		"--tls-private-key-file=" + c.pki.ServingKey,
		"--client-ca-file=" + c.pki.CACert,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.pki.SAPublicKey,
		"--service-account-signing-key-file=" + c.pki.SAPrivateKey,
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--disable-admission-plugins=" + strings.Join(disabledAdmissionPlugins, ","),
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	}
	process, err := c.StartProcess(ControlPlane, "kube-apiserver", append(args, c.opts.APIServerArgs...)...)
	if err != nil {
		return err
	}
	return c.waitReady(process, func(ctx context.Context) error {
		body, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("GET /readyz: %w: %s", err, body)
		}
		return nil
	})
}

func (c *Cluster) startControllerManager() error {
	args := []string{
		filepath.Join(c.opts.BinDir, "kube-controller-manager"),
		"--kubeconfig=" + c.kubeconfig,
		"--authentication-kubeconfig=" + c.kubeconfig,
		"--authorization-kubeconfig=" + c.kubeconfig,
		"--controllers=" + strings.Join(controllers, ","),
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--bind-address=" + ControlPlaneIP,
		"--secure-port=" + controllerManagerPort,
		"--tls-cert-file=" + c.pki.ServingCert,
		"--tls-private-key-file=" + c.pki.ServingKey,
		"--profiling=false",
		"--v=1",
	}
	process, err := c.StartProcess(ControlPlane, "kube-controller-manager", append(args, c.opts.ControllerManagerArgs...)...)
	if err != nil {
		return err
	}
	client := c.HTTPClient(ControlPlane, 2*time.Second)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.pki.CACertPEM)
	client.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	url := "https://" + ControlPlaneIP + ":" + controllerManagerPort + "/healthz"
	return c.waitReady(process, func(ctx context.Context) error {
		return httpCheck(ctx, client, url, "ok")
	})
}

// waitReady polls check until it succeeds, the process exits or StartTimeout passes. Its
// errors carry the tail of the process's log.
func (c *Cluster) waitReady(process *Process, check func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.StartTimeout)
	defer cancel()
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		checkCtx, checkCancel := context.WithTimeout(ctx, 5*time.Second)
		lastErr := check(checkCtx)
		checkCancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-process.Done():
			_, waitErr := process.Exited()
			return fmt.Errorf("%s exited before becoming ready (%v); log tail:\n%s", process.Name, waitErr, process.LogTail(30))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %v: %w; log tail:\n%s", process.Name, c.opts.StartTimeout, lastErr, process.LogTail(30))
		case <-ticker.C:
		}
	}
}

// WaitForHTTP polls url from inside a namespace until it answers 200 or ctx ends. It suits
// the proxy's /healthz (http://<node ip>:10256/healthz) and a pod's HTTP server.
func (c *Cluster) WaitForHTTP(ctx context.Context, ns, url string) error {
	client := c.HTTPClient(ns, 2*time.Second)
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		lastErr := httpCheck(ctx, client, url, "")
		if lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s from %s: %w", url, c.NS(ns), lastErr)
		case <-ticker.C:
		}
	}
}

// httpCheck GETs url and wants status 200 and a body containing want.
func httpCheck(ctx context.Context, client *http.Client, url, want string) error {
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("building a request for %s: %w", url, err)
	}
	response, err := client.Do(request)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(io.LimitReader(response.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("reading the answer of %s: %w", url, err)
	}
	if response.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: status %d: %s", url, response.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}
