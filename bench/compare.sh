#!/usr/bin/env bash
# A change's cost, side by side: runs bench/overhead.sh, bench/gather.sh and bench/verify.sh in
# another checkout (the "before", e.g. a worktree of main) and in this one, alternating script by
# script, so both see the same machine state. Each checkout builds into its own build/ (or
# $C10DTEST_BUILD_DIR relative to it). Compare ratios within one run, not absolute times across
# runs.
#
#   git worktree add ../before origin/main
#   bench/compare.sh ../before          # overhead (5 runs), gather and verify at 4 ranks
#   bench/compare.sh ../before 7 overhead,gather
set -euo pipefail
cd "$(dirname "$0")/.."
after=$(pwd)
before=$(cd "${1:?usage: bench/compare.sh BEFORE_CHECKOUT [REPS] [overhead,gather,verify]}" && pwd)
reps=${2:-5}
which=${3:-overhead,gather,verify}

run() {  # tree script args...
  local tree=$1 script=$2
  shift 2
  echo "--- $(basename "$tree") ($(git -C "$tree" rev-parse --short HEAD 2>/dev/null || echo '?')$(
    git -C "$tree" diff --quiet 2>/dev/null || echo '+changes')): bench/$script $*"
  (cd "$tree" && "bench/$script" "$@")
}

for bench in ${which//,/ }; do
  case "$bench" in
    overhead) args=("$reps") ;;
    gather | verify) args=(4) ;;
    *) echo "compare.sh: unknown benchmark '$bench' (overhead, gather, verify)" >&2; exit 2 ;;
  esac
  echo "=== $bench"
  run "$before" "$bench.sh" "${args[@]}"
  run "$after" "$bench.sh" "${args[@]}"
done
