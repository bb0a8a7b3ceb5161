#!/usr/bin/env bash
# Memory to verify a sharded dict against a 1 GiB reference file, per rank, at 4 ranks: mapped
# safetensors against the file copied into memory and against torch.save (bench/file_bench.cpp).
# Needs about 2.5 GiB free on the temporary directory's file system and 6 GiB of memory.
# Usage: bench/file.sh [RANKS]   (builds first; RANKS defaults to 4)
exec "$(dirname "$0")/run-suite.sh" file_bench "${1:-4}" 1200
