package iptables

import (
	"fmt"
	"os"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// benchServices is the scale of the kernel benchmarks: Services × endpoints each.
const benchServices, benchEndpoints = 1000, 10

// fillWorld adds benchServices ClusterIP Services with benchEndpoints endpoints each.
func fillWorld(w *world, suffix int) {
	for i := range benchServices {
		name := fmt.Sprintf("s%05d", i)
		w.addService(svc("bench", name, fmt.Sprintf("172.30.%d.%d", i/250, i%250+1), nil))
		ips := make([]string, benchEndpoints)
		for e := range ips {
			ips[e] = fmt.Sprintf("10.%d.%d.%d", 100+suffix+e, i/250, i%250+1)
		}
		w.addSlice(slice("bench", name, ips...))
	}
}

// benchNS returns a fresh namespace for a kernel benchmark (skipping without root).
func benchNS(b *testing.B) string {
	if os.Geteuid() != 0 {
		b.Skip("needs root: creates network namespaces and iptables rules")
	}
	return newTestNetNS(b)
}

// BenchmarkKernelFirstFullSync is the first sync of 1,000 Services × 10 endpoints on an
// empty iptables-nft table: one fresh namespace per iteration.
func BenchmarkKernelFirstFullSync(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		ns := benchNS(b)
		w := kernelWorld(b, ns, VariantNFT, v1.IPv4Protocol)
		fillWorld(w, 0)
		b.StartTimer()
		w.mustSync(true)
	}
}

// BenchmarkKernelRestartSync is the first sync of a new proxier over the rules an earlier one
// left for the same state.
func BenchmarkKernelRestartSync(b *testing.B) {
	ns := benchNS(b)
	first := kernelWorld(b, ns, VariantNFT, v1.IPv4Protocol)
	fillWorld(first, 0)
	first.mustSync(true)
	for b.Loop() {
		b.StopTimer()
		w := kernelWorld(b, ns, VariantNFT, v1.IPv4Protocol)
		fillWorld(w, 0)
		b.StartTimer()
		w.mustSync(true)
	}
}

// BenchmarkKernelOneEndpointChange is a partial sync after one Service's endpoints changed.
func BenchmarkKernelOneEndpointChange(b *testing.B) {
	ns := benchNS(b)
	w := kernelWorld(b, ns, VariantNFT, v1.IPv4Protocol)
	fillWorld(w, 0)
	w.mustSync(true)
	i := 0
	for b.Loop() {
		i++
		w.addSlice(slice("bench", "s00500", fmt.Sprintf("10.200.%d.%d", i/250%250, i%250+1)))
		w.mustSync(false)
	}
}

// BenchmarkKernelEndpointsToLocalPod is the side-by-side benchmark's change: a Service's
// ten endpoints replaced by one endpoint on this node, and back, in both families' proxier.
func BenchmarkKernelEndpointsToLocalPod(b *testing.B) {
	ns := benchNS(b)
	w := kernelWorld(b, ns, VariantNFT, v1.IPv4Protocol, v1.IPv6Protocol)
	fillWorld(w, 0)
	w.mustSync(true)
	i := 0
	for b.Loop() {
		i++
		w.addSlice(slice("bench", fmt.Sprintf("s%05d", i%benchServices), "local:10.99.0.1"))
		w.mustSync(false)
	}
}
