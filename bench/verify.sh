#!/usr/bin/env bash
# verify_state_dict on a ~1 GiB sharded state dict at 4 ranks: shard-local against one read pass
# over each rank's shard bytes, gather against one raw allgather of them, with each rank's extra
# peak memory. Needs about 10 GiB of memory at 4 ranks.
# Usage: bench/verify.sh [RANKS]   (builds first; RANKS defaults to 4)
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:-4}
scripts/install-deps.sh
scripts/build.sh verify_bench >/dev/null
scripts/mpirun.sh -np "$ranks" "${C10DTEST_BUILD_DIR:-build}/bench/verify_bench" --gtest_brief=1 \
  --c10dtest_timeout=1800 | grep -vE "^\[|^$"
