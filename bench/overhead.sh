#!/usr/bin/env bash
# Per-test overhead of c10dtest at 4 ranks, beside the cost of one full launch.
#
# For each launcher (mpirun, self-spawn) it times, side by side and alternating, REPS runs of
#   A: one launch running all 50 trivial tests
#   B: one launch running 1 of them
# and reports the medians, the per-test overhead (A - B) / 49, and how many per-test overheads
# one launch costs (B / overhead): what a spawn-per-test harness pays for every test.
# Usage: bench/overhead.sh [REPS]   (builds first; REPS defaults to 5)
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-5}
scripts/install-deps.sh
scripts/build.sh trivial_tests >/dev/null
bin=${C10DTEST_BUILD_DIR:-build}/bench/trivial_tests
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe  # the same for Open MPI 5

seconds() {  # runs "$@" quietly, prints wall seconds; fails if the run failed
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "benchmark run failed: $*" >&2; exit 1; }
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN {print b - a}'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "c10dtest per-test overhead, 4 ranks, $(nproc) cores, $reps runs each (medians)"
printf '%-12s %12s %12s %16s %18s\n' launcher "50 tests s" "1 test s" "per test ms" "launch / per test"
for launcher in mpirun self; do
  if [ "$launcher" = mpirun ]; then run=(mpirun -np 4 "$bin"); else run=("$bin" --c10dtest_world_size=4); fi
  all=(); one=()
  for ((i = 0; i < reps; i++)); do
    all+=("$(seconds "${run[@]}")")
    one+=("$(seconds "${run[@]}" --gtest_filter=Trivial.T00)")
  done
  a=$(printf '%s\n' "${all[@]}" | median)
  b=$(printf '%s\n' "${one[@]}" | median)
  per=$(awk -v a="$a" -v b="$b" 'BEGIN {print (a - b) / 49 * 1000}')
  ratio=$(awk -v b="$b" -v p="$per" 'BEGIN {print (p > 0) ? b * 1000 / p : 0}')
  printf '%-12s %12.3f %12.3f %16.2f %18.0f\n' "$launcher" "$a" "$b" "$per" "$ratio"
done
