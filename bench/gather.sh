#!/usr/bin/env bash
# gather_state_dict at 4 ranks: 10,000 small DTensors against one allgather per tensor, and
# 4 x 64 MiB DTensors against one raw allgather of the same bytes. Ratios > 1 mean we are faster.
# Usage: bench/gather.sh [RANKS]   (builds first; RANKS defaults to 4)
exec "$(dirname "$0")/run-suite.sh" gather_bench "${1:-4}" 1200
