#!/usr/bin/env bash
# Builds the binaries into _output/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p _output/bin
go build -o _output/bin/proxy ./cmd/proxy
if [ -f podagent/go.mod ]; then
  (cd podagent && go build -o ../_output/bin/podagent .)
fi
echo "built: $(ls _output/bin | tr '\n' ' ')"
