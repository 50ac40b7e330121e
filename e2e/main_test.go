package e2e

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// shared is the one cluster of this test binary, started by the first test that needs it.
var shared struct {
	once    sync.Once
	cluster *cluster.Cluster
	err     error
}

// TestMain runs the tests, then stops the shared cluster and fails the run if any namespace
// or process of it is left behind.
func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	code := m.Run()
	c := shared.cluster
	if c == nil {
		return code
	}
	began := time.Now()
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: stopping cluster %s: %v\n", c.RunID, err)
		code = 1
	}
	if err := c.CheckLeaks(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: leak check failed: %v\n", err)
		return 1
	}
	fmt.Printf("e2e: cluster %s stopped in %v, leak check passed\n", c.RunID, time.Since(began).Round(time.Millisecond))
	return code
}

// sharedCluster returns the test binary's cluster, starting it on first use. It skips the
// test in -short mode and when a prerequisite is missing (not root, no etcd, no binaries).
func sharedCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: skipped in -short mode")
	}
	shared.once.Do(func() {
		began := time.Now()
		shared.cluster, shared.err = cluster.New(cluster.Options{RaceBinaries: raceBuild})
		if shared.err == nil {
			t.Logf("e2e: cluster %s up in %v (run dir %s)", shared.cluster.RunID, time.Since(began).Round(time.Millisecond), shared.cluster.Dir)
		}
	})
	if errors.Is(shared.err, cluster.ErrPrerequisite) {
		t.Skip(shared.err)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.cluster
}
