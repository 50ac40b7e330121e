#!/usr/bin/env bash
# Builds upstream kube-proxy (k8s.io/kubernetes/cmd/kube-proxy, the version matching our
# client-go) into the git-ignored cache, for the side-by-side benchmark (bench/sidebyside).
#
#   hack/kube-proxy.sh             build if missing, print the binary's path on the last line
#   NODEPROXY_CACHE=/some/dir      cache root (default: <repo>/.cache); the binary goes to $cache/bin
#   KUBE_VERSION=v1.37.2           upstream version (default below; must match k8s.io/client-go)
#
# Method: the one of hack/control-plane.sh. A throwaway module under $cache/kp-build requires
# k8s.io/kubernetes and replaces every k8s.io staging module (upstream's go.mod points them at
# ./staging, which a module consumer cannot use) with the published v0.X.Y release. A module of
# its own, so this build never disturbs the control plane's. Idempotent: skipped when the binary
# exists, reports the version and the stamp file records it. Nothing in the repository is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib/upstream-module.sh

kube_version="${KUBE_VERSION:-v1.37.2}"
cache="${NODEPROXY_CACHE:-$PWD/.cache}"
mkdir -p "$cache" && cache=$(cd "$cache" && pwd)
bin="$cache/bin"
target="$bin/kube-proxy"
stamp="$bin/kube-proxy.version"

if [ -x "$target" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$kube_version" ] &&
  "$target" --version 2>/dev/null | grep -qF "$kube_version"; then
  echo "kube-proxy: $kube_version already built in $bin"
  echo "$target"
  exit 0
fi

start=$(date +%s)
echo "kube-proxy: building $kube_version (a cold build takes several minutes on 2 cores)"
mkdir -p "$bin"
upstream_module "$cache/kp-build" nodeproxy.local/kubeproxy "$kube_version" kube-proxy
echo "kube-proxy: modules resolved after $(( $(date +%s) - start ))s"
# The version upstream's own build stamps in (kube-proxy --version and the build_info metric).
major_minor=${kube_version#v}
version_pkg=k8s.io/component-base/version
ldflags="-s -w -X $version_pkg.gitVersion=$kube_version -X $version_pkg.gitMajor=${major_minor%%.*}"
major_minor=${major_minor#*.}
ldflags="$ldflags -X $version_pkg.gitMinor=${major_minor%%.*} -X $version_pkg.gitTreeState=clean"
go build -trimpath -ldflags="$ldflags" -o "$target" k8s.io/kubernetes/cmd/kube-proxy
echo "$kube_version" >"$stamp"
echo "kube-proxy: built in $(( $(date +%s) - start ))s into $bin"
echo "$target"
