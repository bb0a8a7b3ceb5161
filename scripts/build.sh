#!/usr/bin/env bash
# Configures and builds c10dtest into ${C10DTEST_BUILD_DIR:-build}. Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${C10DTEST_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DC10DTEST_WERROR=ON "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
