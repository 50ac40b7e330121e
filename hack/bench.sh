#!/usr/bin/env bash
# Runs the Go benchmarks of every package (BENCH_COUNT runs each, default 5) and prints the
# median of each benchmark. Root is needed for the kernel benchmarks; without it they skip.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${BENCH_COUNT:-5}"
pattern="${BENCH:-.}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
echo "== go test -run '^\$' -bench '$pattern' -benchmem -count $count ./..."
status=0
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
exit "$status"
