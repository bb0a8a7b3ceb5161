#!/usr/bin/env bash
# The main job: installs what is missing, builds the example suites and runs them under
# mpirun with 4 ranks. Extra arguments go to the test binaries (e.g. --gtest_filter=...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh collectives_example verify_state_dict_example
build=${C10DTEST_BUILD_DIR:-build}
scripts/mpirun.sh -np 4 "$build/examples/collectives_example" "$@"
scripts/mpirun.sh -np 4 "$build/examples/verify_state_dict_example" "$@"
