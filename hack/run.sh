#!/usr/bin/env bash
# `make run`: a local sandbox node in network namespaces (control plane, node-a running
# `proxy --mode=nftables` and the pod agent, an outside client, a demo Deployment + Service).
# MODE=iptables|userspace picks another mode. Ctrl-C removes everything. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "make run needs root: it creates network namespaces and programs the kernel" >&2
  exit 1
fi
hack/deps.sh
hack/control-plane.sh >/dev/null
go build -o _output/bin/sandbox ./e2e/sandbox
exec _output/bin/sandbox
