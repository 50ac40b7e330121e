//go:build race

package e2e

// raceBuild is true when the tests run with -race: the proxy and the pod agent are then built
// with -race too, reusing the test build's compiled dependencies.
const raceBuild = true
