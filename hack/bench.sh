#!/usr/bin/env bash
# Runs the Go benchmarks of every package (BENCH_COUNT runs each, default 5) and prints the
# median of each benchmark. Root is needed for the kernel benchmarks; without it they skip.
#
# Then, unless BENCH_SIDE_BY_SIDE=0, the side-by-side benchmark against upstream kube-proxy
# (bench/sidebyside: builds the control plane and kube-proxy through hack/control-plane.sh and
# hack/kube-proxy.sh, prints one table per mode and appends them to bench/results.md).
#   BENCH_FULL=1          10,000 Services × 10 endpoints instead of 1,000 × 10
#   BENCH_SIDE_BY_SIDE=only   skip the Go benchmarks, run only the side-by-side one
set -euo pipefail
cd "$(dirname "$0")/.."
count="${BENCH_COUNT:-5}"
pattern="${BENCH:-.}"
side_by_side="${BENCH_SIDE_BY_SIDE:-1}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
status=0

side_by_side() {
  if [ "$(id -u)" != 0 ]; then
    echo "== side-by-side benchmark skipped: needs root (network namespaces)"
    return 0
  fi
  echo
  echo "== side-by-side: nodeproxy versus upstream kube-proxy (bench/sidebyside)"
  hack/deps.sh || return 1
  hack/control-plane.sh || return 1
  local upstream
  upstream=$(hack/kube-proxy.sh | tee /dev/stderr | tail -n 1) || return 1
  local command="hack/bench.sh" var
  for var in BENCH_SIDE_BY_SIDE BENCH_FULL; do
    if [ -n "${!var:-}" ]; then command="$var=${!var} $command"; fi
  done
  go run ./bench/sidebyside -upstream "$upstream" -command "$command"
}

if [ "$side_by_side" = only ]; then
  side_by_side
  exit $?
fi
echo "== go test -run '^\$' -bench '$pattern' -benchmem -count $count ./..."
go test -run '^$' -bench "$pattern" -benchmem -count "$count" ./... > "$out" 2>&1 || status=$?
grep -E '^(Benchmark|ok|FAIL|---|    )' "$out" || true
echo
echo "== medians of $count runs (ns/op, B/op, allocs/op)"
awk '/^Benchmark/ {
  name=$1; ns[name]=ns[name] " " $3
  for (i=4; i<=NF; i++) { if ($(i+1)=="B/op") b[name]=b[name] " " $i; if ($(i+1)=="allocs/op") a[name]=a[name] " " $i }
}
function median(s,   n, v, i, j, t) { n=split(s, v, " "); for (i=1;i<=n;i++) for (j=i+1;j<=n;j++) if (v[j]+0 < v[i]+0) { t=v[i]; v[i]=v[j]; v[j]=t }; return v[int((n+1)/2)] }
END { for (k in ns) printf "%-60s %14s ns/op %12s B/op %9s allocs/op\n", k, median(ns[k]), median(b[k]), median(a[k]) }' "$out" | sort

if [ "$side_by_side" != 0 ]; then
  side_by_side || status=$?
fi
exit "$status"
