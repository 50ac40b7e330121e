#!/usr/bin/env bash
# Runs every test with the race detector: unit tests, kernel tests in throwaway network
# namespaces (as root), and the end-to-end suite against a control plane built from the
# pinned upstream module (cached in .cache/). Extra arguments go to `go test`.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/deps.sh
if [ "$(id -u)" = 0 ]; then
  hack/control-plane.sh >/dev/null   # kube-apiserver + kube-controller-manager for e2e, cached
fi
modprobe -q nf_conntrack 2>/dev/null || true
modprobe -q nf_tables 2>/dev/null || true

# vet with -race: it then type-checks against the race build's compiled packages, which the
# tests build anyway; plain vet compiles every dependency a second time (270 s of a cold run).
# podagent's go.mod pins the same dependency versions as ours for the same reason.
echo "== go vet -race"
go vet -race ./...
echo "== go test -race ./..."
go test -race -count=1 -timeout 20m "$@" ./...
if [ -f podagent/go.mod ]; then
  echo "== go test -race (podagent)"
  (cd podagent && go vet -race ./... && go test -race -count=1 -timeout 10m "$@" ./...)
fi
