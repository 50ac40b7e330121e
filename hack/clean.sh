#!/usr/bin/env bash
# Removes build output and the proxy's own kernel state on this host (proxy --cleanup).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x _output/bin/proxy ] && [ "$(id -u)" = 0 ]; then
  _output/bin/proxy --cleanup || true
fi
rm -rf _output
