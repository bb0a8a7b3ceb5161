#!/usr/bin/env bash
# Builds the benchmark suite TARGET and runs it under mpirun on RANKS ranks, printing only its
# report lines (not gtest's). Used by bench/gather.sh and bench/verify.sh.
# Usage: bench/run-suite.sh TARGET RANKS TIMEOUT_SECONDS
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh "$1" >/dev/null
scripts/mpirun.sh -np "$2" "${C10DTEST_BUILD_DIR:-build}/bench/$1" --gtest_brief=1 \
  --c10dtest_timeout="$3" | grep -vE '^\[|^$'
