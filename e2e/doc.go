// Package e2e holds the end-to-end tests: a real control plane (etcd, kube-apiserver,
// kube-controller-manager) and the test node topology of GUIDE §3, built by package
// e2e/cluster in network namespaces made for each run. The tests need root, etcd
// (hack/deps.sh) and the control plane binaries (hack/control-plane.sh); without them they
// skip and say why. One cluster is shared by all tests of the package (see sharedCluster);
// TestMain tears it down and fails the run if any namespace or process of it is left.
package e2e
