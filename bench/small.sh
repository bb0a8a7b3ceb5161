#!/usr/bin/env bash
# The fixed cost of a verification at 4 ranks: a 128-byte dict by the gather strategy against the
# same dict shard-local, and verify_osd_by_load on CompositeParamModel with Adam against its own
# gather and load. Medians of 50 and 10 calls.
# Usage: bench/small.sh [RANKS]   (builds first; RANKS defaults to 4)
exec "$(dirname "$0")/run-suite.sh" small_verify_bench "${1:-4}" 600
