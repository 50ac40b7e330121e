package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// hintChains are the mangle chains kubelet creates in the variant it uses (KUBE-IPTABLES-HINT
// since 1.24, KUBE-KUBELET-CANARY before): their presence settles the choice.
var hintChains = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// detectTimeout bounds each iptables-save of the detection.
const detectTimeout = 10 * time.Second

// DetectVariant returns the iptables variant (VariantLegacy or VariantNFT) in use in a network
// namespace ("" = the current one; a name under /var/run/netns or an absolute path), as the
// iptables-wrapper of kube-proxy images decides: a variant holding kubelet's hint chain in
// mangle wins (nft checked first); otherwise the variant holding more rules (IPv4 + IPv6) wins,
// nft on a tie. A variant without binaries is never chosen.
func DetectVariant(netnsName string) (string, error) {
	ns := newNSRunner(netnsName)
	var present []string
	for _, v := range []string{VariantNFT, VariantLegacy} {
		if _, err := lookupBinaries(v1.IPv4Protocol, v); err == nil {
			present = append(present, v)
		}
	}
	switch len(present) {
	case 0:
		return "", fmt.Errorf("detecting the iptables variant: neither iptables-nft nor iptables-legacy is installed")
	case 1:
		return present[0], nil
	}
	for _, v := range present {
		if hasHintChain(ns, v) {
			klog.InfoS("Detected the iptables variant from kubelet's hint chain", "variant", v)
			return v, nil
		}
	}
	nft, legacy := countRules(ns, VariantNFT), countRules(ns, VariantLegacy)
	variant := VariantNFT
	if legacy > nft {
		variant = VariantLegacy
	}
	klog.InfoS("Detected the iptables variant from rule counts", "variant", variant, "nftRules", nft, "legacyRules", legacy)
	return variant, nil
}

// saveOutput returns iptables-save output of one variant and family (nil on any failure: an
// unusable variant counts as empty).
func saveOutput(ns nsRunner, family v1.IPFamily, variant string, args ...string) []byte {
	bins, err := lookupBinaries(family, variant)
	if err != nil {
		return nil
	}
	var out bytes.Buffer
	err = ns.do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), detectTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, bins.save, args...)
		cmd.Stdout = &out
		return cmd.Run()
	})
	if err != nil {
		klog.V(2).InfoS("iptables-save failed during variant detection", "command", bins.save, "err", err)
		return nil
	}
	return out.Bytes()
}

// hasHintChain reports whether kubelet's hint chain exists in mangle in the variant.
func hasHintChain(ns nsRunner, variant string) bool {
	for _, family := range []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol} {
		for _, chain := range chainsFromSave(saveOutput(ns, family, variant, "-t", tableMangle)) {
			for _, hint := range hintChains {
				if chain == hint {
					return true
				}
			}
		}
	}
	return false
}

// countRules counts the rules (IPv4 and IPv6) of a variant.
func countRules(ns nsRunner, variant string) int {
	n := 0
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, line := range bytes.Split(saveOutput(ns, family, variant), []byte{'\n'}) {
			if len(line) > 0 && line[0] == '-' {
				n++
			}
		}
	}
	return n
}
