#!/usr/bin/env bash
# Configures and builds c10dtest into ${C10DTEST_BUILD_DIR:-build}.
# Usage: scripts/build.sh [target ...]   (all targets by default; extra cmake configure options
# in $C10DTEST_CMAKE_ARGS, e.g. "-DC10DTEST_GLOO_INCLUDE_DIR=/opt/gloo/include")
set -euo pipefail
cd "$(dirname "$0")/.."
build=${C10DTEST_BUILD_DIR:-build}
# shellcheck disable=SC2086
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DC10DTEST_WERROR=ON \
  ${C10DTEST_CMAKE_ARGS:-} >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$build" -j "$(nproc)" "${targets[@]}"
