#!/usr/bin/env bash
# gather_state_dict at 4 ranks: 10,000 small DTensors against one allgather per tensor, and
# 4 x 64 MiB DTensors against one raw allgather of the same bytes. Ratios > 1 mean we are faster.
# Usage: bench/gather.sh [RANKS]   (builds first; RANKS defaults to 4)
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:-4}
scripts/install-deps.sh
scripts/build.sh gather_bench >/dev/null
scripts/mpirun.sh -np "$ranks" "${C10DTEST_BUILD_DIR:-build}/bench/gather_bench" --gtest_brief=1 \
  --c10dtest_timeout=1200 | grep -E "^(many_small|large)"
