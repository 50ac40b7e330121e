#!/usr/bin/env bash
# Installs the machine packages the tests need (nftables, iptables, conntrack, etcd, iproute2).
# Idempotent and quiet when everything is present. Needs root (apt-get); without root it only
# reports what is missing, and the tests that need those tools skip with that reason.
set -euo pipefail

packages=(nftables iptables conntrack etcd-server iproute2 kmod)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "hack/deps.sh: not root, cannot install: ${missing[*]}" >&2
  exit 0
fi
echo "hack/deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
