//go:build !race

package e2e

// raceBuild is false without -race: the proxy and the pod agent are plain builds.
const raceBuild = false
