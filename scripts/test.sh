#!/usr/bin/env bash
# Runs every test of c10dtest on a fresh Debian 12 machine: installs what is missing, builds, and
# runs CTest (unit tests, the distributed tests at 1, 2 and 4 ranks under mpirun and self-spawn,
# the example suite, the driver of the failing/hanging/crashing child suites, and a short seeded
# fault-injection run, scripts/chaos.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
build=${C10DTEST_BUILD_DIR:-build}
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
