package conntrack

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sysctlFiles maps paths relative to the fake root to their contents.
type sysctlFiles map[string]string

const (
	maxFile         = "proc/sys/net/netfilter/nf_conntrack_max"
	hashFile        = "sys/module/nf_conntrack/parameters/hashsize"
	establishedFile = "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"
	closeWaitFile   = "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	liberalFile     = "proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"
	udpFile         = "proc/sys/net/netfilter/nf_conntrack_udp_timeout"
	udpStreamFile   = "proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream"
)

// defaultFiles is a kernel with small defaults.
func defaultFiles() sysctlFiles {
	return sysctlFiles{
		maxFile: "65536\n", hashFile: "16384\n", establishedFile: "432000\n", closeWaitFile: "60\n",
		liberalFile: "0\n", udpFile: "30\n", udpStreamFile: "120\n",
	}
}

func writeRoot(t *testing.T, files sysctlFiles) string {
	t.Helper()
	root := t.TempDir()
	for rel, content := range files {
		path := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func readRoot(t *testing.T, root string, rel string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func TestApplySysctls(t *testing.T) {
	defaults := SysctlConfig{MaxPerCore: 32768, Min: 131072, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}
	tests := []struct {
		name   string
		cfg    SysctlConfig
		numCPU int
		files  sysctlFiles
		want   map[string]string
	}{
		{"defaults on 2 CPUs use min", defaults, 2, defaultFiles(),
			map[string]string{maxFile: "131072", hashFile: "32768", establishedFile: "86400", closeWaitFile: "3600",
				liberalFile: "0", udpFile: "30", udpStreamFile: "120"}},
		{"scaled above min", defaults, 8, defaultFiles(),
			map[string]string{maxFile: "262144", hashFile: "65536"}},
		{"scaled value capped", defaults, 64, defaultFiles(),
			map[string]string{maxFile: "1048576", hashFile: "262144"}},
		{"never lowered", defaults, 2, sysctlFiles{maxFile: "524288", hashFile: "131072",
			establishedFile: "1", closeWaitFile: "1"},
			map[string]string{maxFile: "524288", hashFile: "131072"}},
		{"hashsize raised even when max already high", defaults, 2, sysctlFiles{maxFile: "524288", hashFile: "1024",
			establishedFile: "1", closeWaitFile: "1"},
			map[string]string{maxFile: "524288", hashFile: "32768"}},
		{"max per core 0 leaves max and min alone", SysctlConfig{Min: 999999}, 2, defaultFiles(),
			map[string]string{maxFile: "65536", hashFile: "16384", establishedFile: "432000", closeWaitFile: "60"}},
		{"UDP timeouts and be_liberal", SysctlConfig{UDPTimeout: 10 * time.Second, UDPStreamTimeout: 90 * time.Second,
			TCPBeLiberal: true}, 2, defaultFiles(),
			map[string]string{udpFile: "10", udpStreamFile: "90", liberalFile: "1", maxFile: "65536"}},
		{"sub-second timeout rounds up", SysctlConfig{UDPTimeout: 300 * time.Millisecond}, 2, defaultFiles(),
			map[string]string{udpFile: "1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := writeRoot(t, tc.files)
			if err := ApplySysctls(root, tc.cfg, tc.numCPU); err != nil {
				t.Fatalf("ApplySysctls: %v", err)
			}
			for rel, want := range tc.want {
				if got := readRoot(t, root, rel); got != want {
					t.Errorf("%s = %q, want %q", rel, got, want)
				}
			}
		})
	}
}

func TestApplySysctlsDoesNotRewriteEqualValues(t *testing.T) {
	root := writeRoot(t, sysctlFiles{establishedFile: "86400\n", udpFile: "30\n"})
	past := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, rel := range []string{establishedFile, udpFile} {
		if err := os.Chtimes(filepath.Join(root, rel), past, past); err != nil {
			t.Fatal(err)
		}
	}
	if err := ApplySysctls(root, SysctlConfig{TCPEstablishedTimeout: 24 * time.Hour, UDPTimeout: 10 * time.Second}, 2); err != nil {
		t.Fatalf("ApplySysctls: %v", err)
	}
	stat := func(rel string) os.FileInfo {
		info, err := os.Stat(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	if !stat(establishedFile).ModTime().Equal(past) {
		t.Error("nf_conntrack_tcp_timeout_established already had the value but was rewritten")
	}
	if stat(udpFile).ModTime().Equal(past) || readRoot(t, root, udpFile) != "10" {
		t.Error("nf_conntrack_udp_timeout differed but was not written")
	}
}

func TestApplySysctlsErrors(t *testing.T) {
	t.Run("missing sysctl file is an error, not created", func(t *testing.T) {
		root := writeRoot(t, sysctlFiles{maxFile: "65536"})
		err := ApplySysctls(root, SysctlConfig{MaxPerCore: 32768, Min: 131072}, 2)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v, want a wrapped ErrNotExist for the missing hashsize", err)
		}
		if _, statErr := os.Stat(filepath.Join(root, hashFile)); statErr == nil {
			t.Error("hashsize file was created")
		}
	})
	t.Run("missing timeout file", func(t *testing.T) {
		root := writeRoot(t, sysctlFiles{})
		if err := ApplySysctls(root, SysctlConfig{UDPTimeout: time.Second}, 2); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v, want a wrapped ErrNotExist", err)
		}
	})
	t.Run("invalid CPU count", func(t *testing.T) {
		root := writeRoot(t, defaultFiles())
		if err := ApplySysctls(root, SysctlConfig{MaxPerCore: 32768}, 0); err == nil {
			t.Error("want an error for 0 CPUs")
		}
	})
	t.Run("unparsable hashsize", func(t *testing.T) {
		files := defaultFiles()
		files[hashFile] = "lots"
		root := writeRoot(t, files)
		if err := ApplySysctls(root, SysctlConfig{MaxPerCore: 32768}, 2); err == nil {
			t.Error("want an error for an unparsable hashsize")
		}
	})
}

func TestHostNumCPU(t *testing.T) {
	if n := HostNumCPU(); n < 1 {
		t.Errorf("HostNumCPU() = %d, want >= 1", n)
	}
}
