#!/usr/bin/env bash
# How c10dtest's costs scale (the numbers in docs/benchmarks.md, "Scaling"):
#   1. per-test overhead of empty tests at each world size in RANKS (one launch each, all on this
#      machine, oversubscribed), with the ratio to 4 ranks measured in the same run; beside it the
#      cost of one store request and of one control-plane exchange, and a 2-D mesh per test;
#   2. one launch of LONG empty tests at 4 ranks: per-test time and rank 0's memory per block of
#      1,000 tests, and the last block against the first; then the same with --gtest_output=xml;
#   3. the fixed cost of a verification (bench/small.sh) at 4 ranks.
# With BEFORE (another build's scale_bench), part 1 runs it too, alternating launch by launch.
# Usage: bench/scale.sh [RANKS] [TESTS] [LONG] [BEFORE]
#   defaults: "2 4 8 16 32 64", 200, 10000, none.  Needs 4 in RANKS for the ratios.
#   MESH_TESTS (environment, default 50): mesh tests (and as many empty ones) per launch.
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:-2 4 8 16 32 64}
tests=${2:-200}
long=${3:-10000}
before=${4:-}
mesh=${MESH_TESTS:-50}
scripts/install-deps.sh
scripts/build.sh scale_bench small_verify_bench >/dev/null
bin=${C10DTEST_BUILD_DIR:-build}/bench/scale_bench
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() {  # run NAME BINARY RANKS TESTS MESH [FLAG...]: one launch; its "scale:" lines go to $out/NAME
  local name=$1 binary=$2 n=$3 t=$4 m=$5 start end
  shift 5
  start=$(date +%s.%N)
  if ! timeout 1800 scripts/mpirun.sh -np "$n" -x C10DTEST_SCALE_TESTS="$t" \
      -x C10DTEST_SCALE_MESH="$m" "$binary" --gtest_brief=1 --c10dtest_heartbeat_timeout=120 \
      --c10dtest_rendezvous_timeout=600 "$@" >"$out/$name.log" 2>&1; then
    echo "benchmark launch failed: $name ($n ranks); its output:" >&2
    tail -n 40 "$out/$name.log" >&2
    exit 1
  fi
  end=$(date +%s.%N)
  grep '^scale:' "$out/$name.log" >"$out/$name" || true
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}' >"$out/$name.wall"
}
field() {  # field NAME KIND KEY: the value after KEY on the "scale: KIND" line of run NAME
  awk -v kind="$2" -v key="$3" '
    ($2 == kind || (kind == "" && $2 == "ranks")) {
      for (i = 2; i < NF; i++) if ($i == key) { print $(i + 1); exit }
    }' "$out/$1"
}

echo "c10dtest scaling: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)," \
  "every rank on this machine (oversubscribed beyond $(nproc) ranks); $tests empty tests and $mesh" \
  "mesh tests per launch"
echo
for n in $ranks; do
  run "after.$n" "$bin" "$n" "$tests" "$mesh"
  if [ -n "$before" ]; then run "before.$n" "$before" "$n" "$tests" "$mesh"; fi
done
base=$(field after.4 "" per_test_ms)
printf '%6s %12s %10s %11s %12s %13s %13s %14s %14s %9s\n' ranks "per test ms" "x 4 ranks" \
  "request us" "exchange ms" "CPU rank 0" "CPU others" "mesh test +ms" "first mesh ms" "launch s"
for n in $ranks; do
  p=$(field "after.$n" "" per_test_ms)
  printf '%6s %12s %10s %11s %12s %13s %13s %14s %14s %9s\n' "$n" "$p" \
    "$(awk -v p="$p" -v b="$base" 'BEGIN {printf "%.2f", p / b}')" \
    "$(field "after.$n" store request_us)" "$(field "after.$n" store exchange_ms)" \
    "$(field "after.$n" store cpu_rank0_ms)" "$(field "after.$n" store cpu_other_ms)" \
    "$(field "after.$n" mesh extra_ms)" "$(field "after.$n" mesh first_ms)" "$(cat "$out/after.$n.wall")"
done
echo "(request: one store add by rank 0 while the others wait; exchange: one control-plane"
echo " all_gather of a short value, every rank; CPU: ms of process CPU per empty test)"
if [ -n "$before" ]; then
  echo
  echo "before ($before), same launches, alternating:"
  bbase=$(field before.4 "" per_test_ms)
  printf '%6s %14s %10s %16s\n' ranks "per test ms" "x 4 ranks" "mesh test +ms"
  for n in $ranks; do
    p=$(field "before.$n" "" per_test_ms)
    printf '%6s %14s %10s %16s\n' "$n" "$p" \
      "$(awk -v p="$p" -v b="$bbase" 'BEGIN {printf "%.2f", p / b}')" "$(field "before.$n" mesh extra_ms)"
  done
fi

if [ "$long" -gt 0 ]; then
  run long "$bin" 4 "$long" 0
  run long.xml "$bin" 4 "$long" 0 --gtest_output="xml:$out/long.xml"
  for name in long long.xml; do
    echo
    if [ "$name" = long ]; then
      echo "$long empty tests in one launch, 4 ranks (rank 0; per-test time within each block):"
    else
      echo "the same with --gtest_output=xml (the report is rewritten as tests finish):"
    fi
    printf '%12s %14s %12s %12s %12s\n' "tests done" "per test ms" "RSS MiB" "peak MiB" "heap MiB"
    awk '$2 == "block" {printf "%12s %14s %12.1f %12.1f %12.1f\n", $6, $8, $10 / 1024, $12 / 1024, $14 / 1024}' "$out/$name"
    awk '$2 == "block" {n++; t[n] = $8; r[n] = $10}
         END {if (n > 1) printf "last block / first block: time %.2f, RSS %.3f\n", t[n] / t[1], r[n] / r[1]}' "$out/$name"
  done
fi

echo
echo "the fixed cost of a verification, 4 ranks (bench/small.sh):"
scripts/mpirun.sh -np 4 "${C10DTEST_BUILD_DIR:-build}/bench/small_verify_bench" --gtest_brief=1 \
  --c10dtest_timeout=600 | grep -vE '^\[|^$'
