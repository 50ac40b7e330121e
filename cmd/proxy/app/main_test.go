package app

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

func TestMain(m *testing.M) {
	// Keep klog's own output (warnings, "Wrote configuration") out of the
	// test log; Main's stdout/stderr are captured separately.
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	_ = klogFlags.Set("logtostderr", "false")
	_ = klogFlags.Set("alsologtostderr", "false")
	_ = klogFlags.Set("stderrthreshold", "FATAL")
	klog.SetOutput(io.Discard)
	os.Exit(m.Run())
}

// resetKlogVerbosity undoes the -v/--vmodule that a Main call applied.
func resetKlogVerbosity() {
	fs := flag.NewFlagSet("reset", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", "0")
	_ = fs.Set("vmodule", "")
}

// mainResult is the outcome of one Main call.
type mainResult struct {
	code   int
	stdout string
	stderr string
	cfg    *Config // what run received; nil when run was not called
}

// runMain calls Main with args and a run function that records its Config.
func runMain(t *testing.T, args ...string) mainResult {
	t.Helper()
	return runMainWith(t, func(context.Context, *Config) error { return nil }, args...)
}

// runMainWith is runMain with a custom run function.
func runMainWith(t *testing.T, run func(context.Context, *Config) error, args ...string) mainResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	var got *Config
	code := Main(context.Background(), args, &stdout, &stderr, func(ctx context.Context, cfg *Config) error {
		got = cfg
		return run(ctx, cfg)
	})
	return mainResult{code: code, stdout: stdout.String(), stderr: stderr.String(), cfg: got}
}

// writeFile writes content into dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
	return path
}

const configHeader = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	cfgFile := func(name, body string) string { return "--config=" + writeFile(t, dir, name, body) }
	notADir := writeFile(t, dir, "plain-file", "x")

	tests := []struct {
		name      string
		args      []string
		wantField string // must appear in the single stderr line
	}{
		{"unknown flag", []string{"--bogus"}, "--bogus"},
		{"flag typo", []string{"--proxy-mod=iptables"}, "--proxy-mod"},
		{"userspace connection cap 0", []string{"--userspace-max-connections=0"}, "userspace-max-connections"},
		{"userspace dial timeout negative", []string{"--userspace-dial-timeout=-1s"}, "userspace-dial-timeout"},
		{"unknown shorthand", []string{"-x"}, "-x"},
		{"bad duration", []string{"--iptables-sync-period=5x"}, "--iptables-sync-period"},
		{"bad bind address", []string{"--bind-address=1.2.3"}, "--bind-address"},
		{"bad healthz address", []string{"--healthz-bind-address=localhost:10256"}, "--healthz-bind-address"},
		{"healthz port 0", []string{"--healthz-bind-address=0.0.0.0:0"}, "healthzBindAddress"},
		{"metrics port 70000", []string{"--metrics-bind-address=127.0.0.1:70000"}, "--metrics-bind-address"},
		{"masquerade bit 32", []string{"--iptables-masquerade-bit=32"}, "iptables.masqueradeBit"},
		{"min sync above sync", []string{"--iptables-sync-period=30s", "--iptables-min-sync-period=1m"}, "iptables.minSyncPeriod"},
		{"sync period 0", []string{"--iptables-sync-period=0", "--iptables-min-sync-period=0"}, "iptables.syncPeriod"},
		{"bad proxy mode", []string{"--proxy-mode=kernelspace"}, "mode"},
		{"ipvs refused", []string{"--mode=ipvs"}, `"ipvs" is not supported`},
		{"bad detect-local-mode", []string{"--detect-local-mode=PodCIDR"}, "detectLocalMode"},
		{"bridge mode without bridge", []string{"--detect-local-mode=BridgeInterface"}, "--pod-bridge-interface"},
		{"prefix mode without prefix", []string{"--detect-local-mode=InterfaceNamePrefix"}, "detectLocal.interfaceNamePrefix"},
		{"three cluster CIDRs", []string{"--cluster-cidr=10.0.0.0/8,fd00::/64,10.1.0.0/16"}, "clusterCIDR"},
		{"two IPv4 cluster CIDRs", []string{"--cluster-cidr=10.0.0.0/8,10.1.0.0/16"}, "clusterCIDR"},
		{"bad cluster CIDR", []string{"--cluster-cidr=10.0.0.0/33"}, "--cluster-cidr"},
		{"bad nodeport address", []string{"--nodeport-addresses=10.0.0.0/8,bogus"}, "nodePortAddresses[1]"},
		{"duplicate nodeport keyword", []string{"--nodeport-addresses=primary,localhost,primary"}, "nodePortAddresses[2]"},
		{"oom score adj 2000", []string{"--oom-score-adj=2000"}, "oomScoreAdj"},
		{"negative conntrack min", []string{"--conntrack-min=-1"}, "conntrack.min"},
		{"negative conntrack timeout", []string{"--conntrack-udp-timeout=-1s"}, "conntrack.udpTimeout"},
		{"negative burst", []string{"--kube-api-burst=-1"}, "clientConnection.burst"},
		{"config sync period 0", []string{"--config-sync-period=0"}, "configSyncPeriod"},
		{"bad logging format", []string{"--logging-format=xml"}, "logging.format"},
		{"split stream without gate", []string{"--log-text-split-stream"}, "logging.options.text.splitStream"},
		{"hidden metrics version", []string{"--show-hidden-metrics-for-version=1.20"}, "showHiddenMetricsForVersion"},
		{"locked feature gate", []string{"--feature-gates=NFTablesProxyMode=false"}, "featureGates"},
		{"bad feature gate value", []string{"--feature-gates=AllowServiceExternalIPs=maybe"}, "--feature-gates"},
		{"whitespace hostname override", []string{"--hostname-override=   "}, "hostname-override"},
		{"bad source scheme", []string{"--source=http://example"}, "--source"},
		{"source not a directory", []string{"--source=file:" + notADir}, "--source"},
		{"positional argument", []string{"extra"}, "does not take any arguments"},
		{"config file missing", []string{"--config=" + filepath.Join(dir, "missing.yaml")}, "config file"},
		{"config malformed YAML", []string{cfgFile("malformed.yaml", configHeader+"mode: [iptables\n")}, "malformed"},
		{"config wrong apiVersion", []string{cfgFile("apiversion.yaml", "apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n")}, "apiVersion"},
		{"config wrong kind", []string{cfgFile("kind.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n")}, "kind"},
		{"config no type", []string{cfgFile("empty.yaml", "mode: iptables\n")}, "apiVersion"},
		{"config wrong field type", []string{cfgFile("type.yaml", configHeader+"oomScoreAdj: lots\n")}, "oomScoreAdj"},
		{"config bad field value", []string{cfgFile("value.yaml", configHeader+"bindAddress: not-an-ip\n")}, "bindAddress"},
		{"config invalid mode", []string{cfgFile("mode.yaml", configHeader+"mode: ebpf\n")}, "mode"},
		{"config ipvs mode", []string{cfgFile("ipvs.yaml", configHeader+"mode: ipvs\n")}, "ipvs"},
		{"config nftables bit", []string{cfgFile("nftbit.yaml", configHeader+"mode: nftables\nnftables:\n  masqueradeBit: 40\n")}, "nftables.masqueradeBit"},
		{"config nftables periods", []string{cfgFile("nftsync.yaml", configHeader+"mode: nftables\nnftables:\n  syncPeriod: 10s\n  minSyncPeriod: 20s\n")}, "nftables.minSyncPeriod"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := runMain(t, tc.args...)
			t.Log(res.stderr)
			if res.code != 1 {
				t.Fatalf("Main(%q) = %d, want 1 (stderr %q)", tc.args, res.code, res.stderr)
			}
			if res.cfg != nil {
				t.Errorf("run was called despite the error")
			}
			if !strings.HasPrefix(res.stderr, "proxy: ") || strings.Count(res.stderr, "\n") != 1 || !strings.HasSuffix(res.stderr, "\n") {
				t.Fatalf("stderr is not exactly one \"proxy: ...\" line: %q", res.stderr)
			}
			if !strings.Contains(res.stderr, tc.wantField) {
				t.Errorf("stderr %q does not name %q", res.stderr, tc.wantField)
			}
		})
	}
}

func TestVersionExitsZero(t *testing.T) {
	res := runMain(t, "--version", "--proxy-mode=bogus")
	if res.code != 0 || res.cfg != nil {
		t.Fatalf("--version: code %d, run called %t", res.code, res.cfg != nil)
	}
	if want := "Kubernetes " + Version + "\n"; res.stdout != want {
		t.Errorf("--version printed %q, want %q", res.stdout, want)
	}

	res = runMain(t, "--version=raw")
	if res.code != 0 || !strings.Contains(res.stdout, `GitVersion:"`+Version+`"`) {
		t.Errorf("--version=raw: code %d, stdout %q", res.code, res.stdout)
	}

	res = runMain(t, "--version=v1.2.3")
	if res.code != 0 || res.cfg == nil {
		t.Fatalf("--version=v1.2.3 should run: code %d stderr %q", res.code, res.stderr)
	}
	if res.cfg.Version != "v1.2.3" {
		t.Errorf("reported version = %q, want v1.2.3", res.cfg.Version)
	}
}

func TestHelpExitsZero(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		res := runMain(t, arg)
		if res.code != 0 || res.cfg != nil || res.stderr != "" {
			t.Fatalf("%s: code %d, run called %t, stderr %q", arg, res.code, res.cfg != nil, res.stderr)
		}
		for _, want := range []string{"Usage:", "--proxy-mode ProxyMode", "--source string", "-v, --v Level"} {
			if !strings.Contains(res.stdout, want) {
				t.Errorf("%s output lacks %q", arg, want)
			}
		}
	}
}

func TestRunErrorIsOneLine(t *testing.T) {
	res := runMainWith(t, func(context.Context, *Config) error {
		return errors.New("first line\nsecond line")
	})
	if res.code != 1 {
		t.Fatalf("code = %d, want 1", res.code)
	}
	if res.stderr != "proxy: first line second line\n" {
		t.Errorf("stderr = %q", res.stderr)
	}
}

func TestVerbosityFlagSetsKlog(t *testing.T) {
	t.Cleanup(resetKlogVerbosity)
	if res := runMain(t, "-v=4"); res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	if !klog.V(4).Enabled() || klog.V(5).Enabled() {
		t.Errorf("klog verbosity not set to 4 by -v=4")
	}
}

func TestDeprecatedFlagsWarn(t *testing.T) {
	res := runMain(t, "--healthz-port=0", "--metrics-port=10249")
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	for _, want := range []string{"Flag --healthz-port has been deprecated", "Flag --metrics-port has been deprecated"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr %q lacks %q", res.stderr, want)
		}
	}
	if res.cfg.HealthzBindAddress != "" {
		t.Errorf("--healthz-port=0 should disable healthz, got %q", res.cfg.HealthzBindAddress)
	}

	res = runMain(t, "--healthz-bind-address=10.0.0.1", "--healthz-port=1234", "--metrics-bind-address=::1")
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	if res.cfg.HealthzBindAddress != "10.0.0.1:1234" || res.cfg.MetricsBindAddress != "[::1]:10249" {
		t.Errorf("bind addresses = %q, %q; want 10.0.0.1:1234, [::1]:10249", res.cfg.HealthzBindAddress, res.cfg.MetricsBindAddress)
	}
}
