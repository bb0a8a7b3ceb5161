#!/usr/bin/env bash
# verify_state_dict on a ~1 GiB sharded state dict at 4 ranks: shard-local against one read pass
# over each rank's shard bytes, gather against one raw allgather of them, with each rank's extra
# peak memory. Needs about 10 GiB of memory at 4 ranks.
# Usage: bench/verify.sh [RANKS]   (builds first; RANKS defaults to 4)
exec "$(dirname "$0")/run-suite.sh" verify_bench "${1:-4}" 1800
