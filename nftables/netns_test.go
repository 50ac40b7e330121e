package nftables

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// testNetns is a named network namespace a test programs and inspects with the nft CLI.
type testNetns struct {
	name   string
	handle netns.NsHandle
}

// fd is the namespace's file descriptor, for Config.NetNSFd.
func (n *testNetns) fd() int { return int(n.handle) }

// newTestNetns creates a named network namespace (skipping the test unless root) and removes
// it when the test ends. The calling thread is back in its own namespace on return.
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and programs nftables in it")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft CLI to inspect the kernel state")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("getting the current network namespace: %v", err)
	}
	defer orig.Close()
	name := fmt.Sprintf("np-nft-%d-%d", os.Getpid(), rand.IntN(1<<30))
	handle, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("creating network namespace %s: %v", name, err)
	}
	if err := netns.Set(orig); err != nil {
		// This thread is stuck in the new namespace: never unlock it, so it is discarded.
		runtime.LockOSThread()
		t.Fatalf("returning to the original network namespace: %v", err)
	}
	n := &testNetns{name: name, handle: handle}
	t.Cleanup(func() {
		n.handle.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting network namespace %s: %v", name, err)
		}
	})
	return n
}

// nft runs the nft CLI in the namespace and returns its standard output.
func (n *testNetns) nft(t *testing.T, args ...string) string {
	t.Helper()
	out, err := n.tryNFT(args...)
	if err != nil {
		t.Fatalf("nft %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (n *testNetns) tryNFT(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name, "nft"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return string(out), nil
}

// nftScript runs `nft -f -` with script in the namespace.
func (n *testNetns) nftScript(t *testing.T, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\nscript:\n%s", err, out, script)
	}
}
