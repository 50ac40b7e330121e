#!/usr/bin/env bash
# Builds the e2e control plane, kube-apiserver and kube-controller-manager, from the pinned
# upstream module k8s.io/kubernetes (the version matching our client-go) into a git-ignored cache.
#
#   hack/control-plane.sh          build if missing, print the bin directory on the last line
#   NODEPROXY_CACHE=/some/dir      cache root (default: <repo>/.cache); binaries go to $cache/bin
#   KUBE_VERSION=v1.37.2           upstream version (default below; must match k8s.io/client-go)
#
# Method: a throwaway module under $cache/cp-build requires k8s.io/kubernetes and replaces every
# k8s.io staging module (upstream's go.mod points them at ./staging, which a module consumer
# cannot use) with the published v0.X.Y release; both commands are built in one `go build` so
# shared packages compile once. Idempotent: skipped when both binaries exist and the stamp
# file records the same version. The e2e harness (e2e/cluster) looks for the binaries here.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib/upstream-module.sh

kube_version="${KUBE_VERSION:-v1.37.2}"
cache="${NODEPROXY_CACHE:-$PWD/.cache}"
mkdir -p "$cache" && cache=$(cd "$cache" && pwd)
bin="$cache/bin"
stamp="$bin/control-plane.version"
commands=(kube-apiserver kube-controller-manager)

have_all() {
  for c in "${commands[@]}"; do [ -x "$bin/$c" ] || return 1; done
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$kube_version" ]
}

if have_all; then
  echo "control-plane: $kube_version already built in $bin"
  echo "$bin"
  exit 0
fi

start=$(date +%s)
echo "control-plane: building ${commands[*]} $kube_version (a cold build takes 10+ minutes on 2 cores)"
mkdir -p "$bin"
upstream_module "$cache/cp-build" nodeproxy.local/controlplane "$kube_version" "${commands[@]}"
echo "control-plane: modules resolved after $(( $(date +%s) - start ))s"
pkgs=()
for c in "${commands[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
go build -trimpath -ldflags="-s -w" -o "$bin/" "${pkgs[@]}"
echo "$kube_version" >"$stamp"
echo "control-plane: built in $(( $(date +%s) - start ))s into $bin"
echo "$bin"
