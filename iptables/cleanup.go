package iptables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// cleanupTimeout bounds each iptables-save and iptables-restore of Cleanup.
const cleanupTimeout = time.Minute

// ownedTopChains are the top-level chains Cleanup deletes, per table: upstream kube-proxy's
// and nodeproxy's (the same names). Kubelet's KUBE-FIREWALL is not among them.
var ownedTopChains = map[string][]string{
	tableNAT:    {ChainServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq, ChainHairpin, ChainCanary},
	tableFilter: {ChainServices, ChainExternalServices, ChainForward, ChainNodePorts, ChainProxyFirewall, ChainCanary},
}

// Cleanup removes every iptables rule and chain of the iptables proxy mode, nodeproxy's or
// upstream kube-proxy's, from both variants (legacy and nft) and both families, in a network
// namespace ("" = the current one; a name under /var/run/netns or an absolute path). It
// leaves kubelet's KUBE-FIREWALL alone. Missing binaries or empty tables are not errors.
func Cleanup(netnsName string) error {
	ns := newNSRunner(netnsName)
	var errs []error
	for _, variant := range []string{VariantNFT, VariantLegacy} {
		for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			if variant == VariantLegacy && !legacyTablesLoaded(ns, family) {
				continue // reading them would load the legacy modules for nothing
			}
			exec, err := newExecExecutor(family, variant, ns)
			if err != nil {
				klog.V(2).InfoS("Skipping iptables cleanup: binaries unavailable", "variant", variant, "family", family, "err", err)
				continue
			}
			if err := cleanupFamily(exec); err != nil {
				errs = append(errs, fmt.Errorf("cleaning up %s %s iptables rules: %w", variant, family, err))
			}
			exec.close()
		}
	}
	return errors.Join(errs...)
}

// legacyTablesLoaded reports whether the namespace has any legacy x_tables table loaded.
func legacyTablesLoaded(ns nsRunner, family v1.IPFamily) bool {
	// /proc/net follows the process's first thread; thread-self follows the calling thread,
	// which is the one in the namespace.
	file := "/proc/thread-self/net/ip_tables_names"
	if family == v1.IPv6Protocol {
		file = "/proc/thread-self/net/ip6_tables_names"
	}
	loaded := false
	_ = ns.do(func() error {
		b, err := os.ReadFile(file)
		loaded = err == nil && strings.TrimSpace(string(b)) != ""
		return nil
	})
	return loaded
}

// cleanupFamily removes the jumps, then the chains, of one variant and family.
func cleanupFamily(exec Executor) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	chains := map[string]map[string]bool{}
	ours := 0
	for _, table := range canaryTables { // mangle, nat, filter
		names, err := exec.ChainNames(ctx, table)
		if err != nil {
			return err
		}
		chains[table] = map[string]bool{}
		for _, n := range names {
			if n == ChainCanary || (table == tableNAT && isServiceChain(n)) || isOwnedTop(table, n) {
				chains[table][n] = true
				ours++
			}
		}
	}
	if ours == 0 {
		return nil
	}
	var errs []error
	for _, j := range jumpRules {
		if chains[j.table][j.to] {
			if err := exec.DeleteRule(j.table, j.from, j.args()...); err != nil {
				errs = append(errs, err)
			}
		}
	}
	rt := &restoreText{}
	for _, table := range []string{tableNAT, tableFilter} {
		for _, name := range sortedKeys(chains[table]) {
			rt.deleteChain(table, name)
		}
	}
	if data := rt.bytes(); data != nil {
		if err := exec.Restore(ctx, data); err != nil {
			errs = append(errs, err)
		}
	}
	if chains[tableMangle][ChainCanary] {
		if err := exec.DeleteChain(tableMangle, ChainCanary); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// isOwnedTop reports whether chain is one of the top-level chains Cleanup deletes in table.
func isOwnedTop(table, chain string) bool {
	for _, c := range ownedTopChains[table] {
		if c == chain {
			return true
		}
	}
	return false
}

// sortedKeys returns the keys of a set, sorted.
func sortedKeys(set map[string]bool) []string {
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
