package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nodeproxy/nodeproxy/e2e/cluster"
)

// nodeDumps are the commands whose output dumpNodesOnFailure saves per node: the rules the
// proxy programmed (nftables for the nftables and userspace modes, iptables-save for the
// iptables mode) and the connection tracking table.
var nodeDumps = map[string][]string{
	"nft-ruleset.txt":   {"nft", "list", "ruleset"},
	"iptables-save.txt": {"iptables-save"},
	"conntrack.txt":     {"conntrack", "-L"},
}

// dumpNodesOnFailure registers a cleanup that, when the test failed, logs the tail of each
// node's proxy log and writes the node's rules and conntrack table to the test's artifact
// directory (kept with go test -artifacts). It runs before the namespace and the nodes go.
func dumpNodesOnFailure(t *testing.T, c *cluster.Cluster, mode string, nodes []*cluster.Node) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		dir := t.ArtifactDir()
		for _, node := range nodes {
			if node == nil {
				continue
			}
			if node.Proxy != nil {
				t.Logf("%s mode, %s: proxy log tail:\n%s", mode, node.Name, node.Proxy.LogTail(20))
			}
			for file, argv := range nodeDumps {
				out, err := c.Exec(node.Name, argv...)
				if err != nil {
					out += "\n# " + err.Error() + "\n"
				}
				path := filepath.Join(dir, node.Name+"-"+file)
				if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
					t.Logf("writing %s: %v", path, err)
				}
			}
		}
		t.Logf("%s mode: rules and conntrack tables of the nodes written to %s (kept with go test -artifacts)", mode, dir)
	})
}
