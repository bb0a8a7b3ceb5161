#!/usr/bin/env bash
# The main job: installs what is missing, builds the example suite and runs it under
# mpirun with 4 ranks. Extra arguments go to the test binary (e.g. --gtest_filter=...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh collectives_example
build=${C10DTEST_BUILD_DIR:-build}
scripts/mpirun.sh -np 4 "$build/examples/collectives_example" "$@"
