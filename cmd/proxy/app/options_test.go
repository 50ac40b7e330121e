package app

import (
	"bufio"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestFlagsMatchUpstream(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "kube-proxy-v1.37-flags.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	fs, _ := newFlagSet(NewOptions())
	checked := 0
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		line := scanner.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.SplitN(line, "\t", 3)
		if len(parts) != 3 {
			t.Fatalf("malformed line %q", line)
		}
		name, typ, def := parts[0], parts[1], parts[2]
		checked++
		flag := fs.Lookup(name)
		if flag == nil {
			t.Errorf("upstream flag --%s is missing", name)
			continue
		}
		if got := flag.Value.Type(); got != typ {
			t.Errorf("--%s: type %q, upstream %q", name, got, typ)
		}
		if flag.DefValue != def {
			t.Errorf("--%s: default %q, upstream %q", name, flag.DefValue, def)
		}
	}
	if err := scanner.Err(); err != nil {
		t.Fatal(err)
	}
	if checked < 55 {
		t.Fatalf("only %d upstream flags listed; the testdata file looks truncated", checked)
	}
	for name, short := range map[string]string{"v": "v", "help": "h"} {
		if f := fs.Lookup(name); f == nil || f.Shorthand != short {
			t.Errorf("--%s should have shorthand -%s", name, short)
		}
	}
	for _, name := range []string{"healthz-port", "metrics-port"} {
		if f := fs.Lookup(name); f == nil || f.Deprecated == "" {
			t.Errorf("--%s should be marked deprecated", name)
		}
	}
	if fs.Lookup("mode") == nil || fs.Lookup("source") == nil {
		t.Errorf("nodeproxy's --mode and --source flags are missing")
	}
}

func TestFlagOverridesWithoutConfig(t *testing.T) {
	srcDir := t.TempDir()
	res := runMain(t,
		"--iptables-sync-period=10s", "--iptables-min-sync-period=2s", "--masquerade-all",
		"--cluster-cidr=10.0.0.0/8,fd00::/64", "--bind-address=10.1.2.3",
		"--healthz-bind-address=10.1.2.3", "--metrics-bind-address=0.0.0.0:9999",
		"--kube-api-qps=20", "--kube-api-burst=30", "--kube-api-content-type=application/json",
		"--conntrack-min=5", "--conntrack-max-per-core=0", "--conntrack-tcp-be-liberal",
		"--oom-score-adj=-500", "--hostname-override=MyNode", "--nodeport-addresses=10.0.0.0/8,localhost",
		"--iptables-masquerade-bit=5", "--iptables-localhost-nodeports=false", "--config-sync-period=1m",
		"--kubeconfig=/etc/kube.conf", "--master=https://api:6443", "--profiling",
		"--source=file:"+srcDir, "--init-only", "--mode=iptables",
		"--userspace-max-connections=50", "--userspace-dial-timeout=2s",
	)
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	c := res.cfg
	want := Config{
		Mode: ModeIPTables, SyncPeriod: 10 * time.Second, MinSyncPeriod: 2 * time.Second,
		MasqueradeAll: true, MasqueradeBit: 5, LocalhostNodePorts: false, ConfigSyncPeriod: time.Minute,
		ClusterCIDRs:      []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/64")},
		DetectLocalMode:   LocalModeClusterCIDR,
		NodePortAddresses: []string{"10.0.0.0/8", "localhost"},
		HostnameOverride:  "mynode", NodeName: "mynode",
		Kubeconfig: "/etc/kube.conf", Master: "https://api:6443",
		ContentType: "application/json", QPS: 20, Burst: 30,
		HealthzBindAddress: "10.1.2.3:10256", MetricsBindAddress: "0.0.0.0:9999", BindAddress: "10.1.2.3",
		EnableProfiling: true, OOMScoreAdj: -500,
		Conntrack: ConntrackConfig{MaxPerCore: 0, Min: 5, TCPEstablishedTimeout: 24 * time.Hour,
			TCPCloseWaitTimeout: time.Hour, TCPBeLiberal: true},
		Source: "file:" + srcDir, SourceDir: srcDir, InitOnly: true, Version: Version,
		Userspace: UserspaceConfig{MaxConnections: 50, MaxUDPSessions: 10000, DialTimeout: 2 * time.Second,
			UDPIdleTimeout: 30 * time.Second, DrainTimeout: 30 * time.Second},
	}
	got := *c
	got.KubeProxyConfiguration, got.FeatureGates = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Config mismatch:\n got %+v\nwant %+v", got, want)
	}
	kp := c.KubeProxyConfiguration
	if kp.IPTables.SyncPeriod.Duration != 10*time.Second || !kp.IPTables.MasqueradeAll || kp.NFTables.SyncPeriod.Duration != 0 {
		t.Errorf("v1alpha1 blocks not mode-selected: iptables %+v nftables %+v", kp.IPTables, kp.NFTables)
	}
	if kp.ClusterCIDR != "10.0.0.0/8,fd00::/64" {
		t.Errorf("clusterCIDR = %q", kp.ClusterCIDR)
	}
}

func TestModeDefaultedToIPTables(t *testing.T) {
	res := runMain(t)
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	c := res.cfg
	if c.Mode != ModeIPTables || !c.ModeDefaulted {
		t.Errorf("mode %q defaulted=%t, want iptables/true", c.Mode, c.ModeDefaulted)
	}
	if c.SyncPeriod != DefaultSyncPeriod || c.MinSyncPeriod != DefaultMinSyncPeriod || c.HealthzBindAddress != "0.0.0.0:10256" ||
		c.MetricsBindAddress != "127.0.0.1:10249" || c.DetectLocalMode != LocalModeClusterCIDR || len(c.NodePortAddresses) != 0 {
		t.Errorf("unexpected defaults: %+v", c)
	}
	if c.FeatureGates[FeatureAllowServiceExternalIPs] != true || c.FeatureGates[FeatureKubeProxyNFTablesLocalhostNodePorts] {
		t.Errorf("unexpected default gates: %v", c.FeatureGates)
	}
}

func TestNFTablesModeDefaults(t *testing.T) {
	res := runMain(t, "--proxy-mode=nftables", "--iptables-sync-period=7s", "--masquerade-all")
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	c := res.cfg
	if !reflect.DeepEqual(c.NodePortAddresses, []string{NodePortAddressesPrimary}) {
		t.Errorf("nodePortAddresses = %q, want [primary]", c.NodePortAddresses)
	}
	if c.SyncPeriod != 7*time.Second || c.MinSyncPeriod != time.Second || !c.MasqueradeAll {
		t.Errorf("--iptables-* flags must drive nftables mode: sync %s min %s masqAll %t", c.SyncPeriod, c.MinSyncPeriod, c.MasqueradeAll)
	}
	kp := c.KubeProxyConfiguration
	if kp.NFTables.SyncPeriod.Duration != 7*time.Second || kp.IPTables.SyncPeriod.Duration != 0 || !kp.NFTables.MasqueradeAll || kp.IPTables.MasqueradeAll {
		t.Errorf("blocks: iptables %+v nftables %+v", kp.IPTables, kp.NFTables)
	}

	// From a file, nftables mode reads the nftables block (periods, bit,
	// masqueradeAll) and ignores the iptables one.
	path := writeFile(t, t.TempDir(), "nft.yaml", configHeader+`mode: nftables
iptables:
  syncPeriod: 10s
  minSyncPeriod: 5s
  masqueradeBit: 20
  masqueradeAll: false
nftables:
  syncPeriod: 45s
  minSyncPeriod: 3s
  masqueradeBit: 3
  masqueradeAll: true
nodePortAddresses: [192.168.0.0/16]
`)
	res = runMain(t, "--config="+path)
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	c = res.cfg
	if c.SyncPeriod != 45*time.Second || c.MinSyncPeriod != 3*time.Second || c.MasqueradeBit != 3 || !c.MasqueradeAll {
		t.Errorf("nftables block not used: %+v", c)
	}
	if !reflect.DeepEqual(c.NodePortAddresses, []string{"192.168.0.0/16"}) {
		t.Errorf("explicit nodePortAddresses replaced: %q", c.NodePortAddresses)
	}

	// The iptables mode reads the iptables block instead.
	res = runMain(t, "--config="+writeFile(t, t.TempDir(), "ipt.yaml", configHeader+`mode: iptables
iptables: {syncPeriod: 10s, minSyncPeriod: 5s, masqueradeBit: 20}
nftables: {syncPeriod: 45s, masqueradeBit: 3}
`))
	if res.code != 0 || res.cfg.SyncPeriod != 10*time.Second || res.cfg.MinSyncPeriod != 5*time.Second || res.cfg.MasqueradeBit != 20 {
		t.Errorf("iptables block not used: code %d stderr %q cfg %+v", res.code, res.stderr, res.cfg)
	}
}

func TestConfigFileWinsOverFlags(t *testing.T) {
	path := writeFile(t, t.TempDir(), "cfg.yaml", configHeader+`mode: nftables
bindAddress: 10.9.9.9
hostnameOverride: from-file
clusterCIDR: 10.244.0.0/16
nftables:
  syncPeriod: 20s
clientConnection:
  kubeconfig: /from/file
logging:
  vmodule:
  - filePattern: file
    verbosity: 1
`)
	res := runMain(t, "--config="+path,
		"--proxy-mode=iptables", "--iptables-sync-period=5s", "--bind-address=1.1.1.1",
		"--cluster-cidr=10.0.0.0/8", "--kubeconfig=/from/flag", "--hostname-override= Flag-Node ",
		"--master=https://m", "--cleanup", "-v=2", "--vmodule=flag=3",
	)
	t.Cleanup(resetKlogVerbosity)
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	c := res.cfg
	if c.Mode != ModeNFTables || c.SyncPeriod != 20*time.Second || c.BindAddress != "10.9.9.9" || c.Kubeconfig != "/from/file" {
		t.Errorf("file did not win over bound flags: %+v", c)
	}
	if !reflect.DeepEqual(c.ClusterCIDRs, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}) {
		t.Errorf("clusterCIDRs = %v", c.ClusterCIDRs)
	}
	if c.HostnameOverride != "flag-node" || c.NodeName != "flag-node" {
		t.Errorf("--hostname-override not applied over the file: %q / %q", c.HostnameOverride, c.NodeName)
	}
	if c.Master != "https://m" || !c.Cleanup || c.ConfigFile != path {
		t.Errorf("non-config flags lost: master %q cleanup %t configFile %q", c.Master, c.Cleanup, c.ConfigFile)
	}
	l := c.KubeProxyConfiguration.Logging
	if l.Verbosity != 2 || len(l.VModule) != 2 || l.VModule[0].FilePattern != "flag" || l.VModule[1].FilePattern != "file" {
		t.Errorf("logging flags not copied over the file: verbosity %d vmodule %+v", l.Verbosity, l.VModule)
	}
}

func TestWriteConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "written.yaml")
	flags := []string{"--proxy-mode=nftables", "--iptables-sync-period=12s", "--cluster-cidr=10.0.0.0/8",
		"--conntrack-min=7", "--oom-score-adj=10", "--nodeport-addresses=10.0.0.0/8", "--masquerade-all",
		"--feature-gates=AllowServiceExternalIPs=false"}

	direct := runMain(t, flags...)
	if direct.code != 0 {
		t.Fatalf("code %d, stderr %q", direct.code, direct.stderr)
	}
	written := runMain(t, append(flags, "--write-config-to="+out)...)
	if written.code != 0 || written.cfg != nil {
		t.Fatalf("--write-config-to: code %d, run called %t, stderr %q", written.code, written.cfg != nil, written.stderr)
	}
	loaded := runMain(t, "--config="+out)
	if loaded.code != 0 {
		t.Fatalf("loading the written config: code %d, stderr %q", loaded.code, loaded.stderr)
	}
	wantYAML, err := encodeConfig(direct.cfg.KubeProxyConfiguration)
	if err != nil {
		t.Fatal(err)
	}
	gotYAML, err := encodeConfig(loaded.cfg.KubeProxyConfiguration)
	if err != nil {
		t.Fatal(err)
	}
	if string(gotYAML) != string(wantYAML) {
		t.Errorf("round trip changed the configuration:\n got:\n%s\nwant:\n%s", gotYAML, wantYAML)
	}
	a, b := *direct.cfg, *loaded.cfg
	a.KubeProxyConfiguration, b.KubeProxyConfiguration, b.ConfigFile = nil, nil, ""
	if !reflect.DeepEqual(a, b) {
		t.Errorf("resolved Config differs after round trip:\n got %+v\nwant %+v", b, a)
	}
	fileBytes, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"apiVersion: kubeproxy.config.k8s.io/v1alpha1\n", "kind: KubeProxyConfiguration\n", "mode: nftables\n", "  syncPeriod: 12s\n"} {
		if !strings.Contains(string(fileBytes), want) {
			t.Errorf("written file lacks %q", want)
		}
	}
}

func TestKubeadmConfigLoads(t *testing.T) {
	res := runMain(t, "--config="+filepath.Join("testdata", "kubeadm-kube-proxy.yaml"))
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	c := res.cfg
	checks := map[string]bool{
		"mode iptables, not defaulted": c.Mode == ModeIPTables && !c.ModeDefaulted,
		"clusterCIDR":                  reflect.DeepEqual(c.ClusterCIDRs, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}),
		"kubeconfig":                   c.Kubeconfig == "/var/lib/kube-proxy/kubeconfig.conf",
		"client defaults":              c.QPS == DefaultQPS && c.Burst == DefaultBurst && c.ContentType == DefaultContentType,
		"server addresses":             c.HealthzBindAddress == "0.0.0.0:10256" && c.MetricsBindAddress == "127.0.0.1:10249" && c.BindAddress == "0.0.0.0",
		"periods":                      c.SyncPeriod == 30*time.Second && c.MinSyncPeriod == time.Second && c.ConfigSyncPeriod == 15*time.Minute,
		"masquerade":                   c.MasqueradeBit == 14 && !c.MasqueradeAll && c.LocalhostNodePorts,
		"conntrack":                    c.Conntrack == ConntrackConfig{MaxPerCore: 32768, Min: 131072, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour},
		"oom":                          c.OOMScoreAdj == -999,
		"detect local":                 c.DetectLocalMode == LocalModeClusterCIDR,
		"nodeport addresses":           len(c.NodePortAddresses) == 0,
		"logging":                      c.KubeProxyConfiguration.Logging.Format == "text" && c.KubeProxyConfiguration.Logging.FlushFrequency.Duration.Duration == 5*time.Second,
	}
	for name, ok := range checks {
		if !ok {
			t.Errorf("kubeadm config: %s wrong: %+v", name, c)
		}
	}
}

func TestConfigDecoding(t *testing.T) {
	dir := t.TempDir()

	// Unknown (and wrongly-cased) fields: warning, then lenient decoding.
	lenient := writeFile(t, dir, "lenient.yaml", configHeader+"mode: nftables\nnotAField: 1\nBindAddress: 9.9.9.9\n")
	res := runMain(t, "--config="+lenient)
	if res.code != 0 || res.cfg.Mode != ModeNFTables || res.cfg.BindAddress != "0.0.0.0" {
		t.Errorf("lenient decoding: code %d stderr %q cfg %+v", res.code, res.stderr, res.cfg)
	}

	// JSON is accepted too.
	jsonFile := writeFile(t, dir, "cfg.json", `{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration","mode":"userspace","oomScoreAdj":-100,"detectLocalMode":"NodeCIDR","clusterCIDR":"not-a-cidr"}`)
	res = runMain(t, "--config="+jsonFile)
	if res.code != 0 {
		t.Fatalf("JSON config: code %d, stderr %q", res.code, res.stderr)
	}
	// clusterCIDR is only validated in ClusterCIDR mode (as upstream); the
	// unusable value is dropped from the resolved CIDRs.
	if res.cfg.Mode != ModeUserspace || res.cfg.OOMScoreAdj != -100 || res.cfg.DetectLocalMode != LocalModeNodeCIDR || len(res.cfg.ClusterCIDRs) != 0 {
		t.Errorf("JSON config resolved wrongly: %+v", res.cfg)
	}
	if res.cfg.SyncPeriod != DefaultSyncPeriod {
		t.Errorf("userspace mode should read the iptables block: sync %s", res.cfg.SyncPeriod)
	}
}

func TestFeatureGates(t *testing.T) {
	res := runMain(t, "--feature-gates=AllowServiceExternalIPs=false,KubeProxyNFTablesLocalhostNodePorts=true,SomeKubeletGate=true")
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	g := res.cfg.FeatureGates
	if g[FeatureAllowServiceExternalIPs] || !g[FeatureKubeProxyNFTablesLocalhostNodePorts] || !g[FeatureNFTablesNetlink] {
		t.Errorf("gates = %v", g)
	}
	if _, ok := g["SomeKubeletGate"]; ok {
		t.Errorf("unknown gate should be ignored, got %v", g)
	}

	// With --config, the file's featureGates win over the flag.
	path := writeFile(t, t.TempDir(), "gates.yaml", configHeader+"featureGates:\n  NFTablesNetlink: false\n")
	res = runMain(t, "--config="+path, "--feature-gates=AllowServiceExternalIPs=false")
	if res.code != 0 {
		t.Fatalf("code %d, stderr %q", res.code, res.stderr)
	}
	if g := res.cfg.FeatureGates; g[FeatureNFTablesNetlink] || !g[FeatureAllowServiceExternalIPs] {
		t.Errorf("file gates should replace the flag: %v", g)
	}
}
