#!/usr/bin/env bash
# Builds the consumer project (test/package/consumer) against c10dtest one way and runs its
# suite under CTest at 1, 2 and 4 ranks:
#   package       installs BUILD_DIR into a temporary prefix, then find_package(c10dtest)
#   subdirectory  add_subdirectory() of this source tree
#   fetchcontent  FetchContent from a temporary git repository holding this tree's files
# Usage: test/package/run.sh MODE BUILD_DIR   (CTest runs it as package.MODE)
set -euo pipefail
mode=$1
build=$(cd "$2" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/c10dtest-package.XXXXXX")
trap 'rm -rf "$work"' EXIT

args=(-DC10DTEST_CONSUMER_MODE="$mode")
case $mode in
  package)
    cmake --install "$build" --prefix "$work/prefix" >/dev/null
    args+=(-DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release)
    ;;
  subdirectory)
    # This mode and fetchcontent compile the library again from source: unoptimised (no build
    # type), which is quickest; what they check is the CMake wiring.
    args+=(-DC10DTEST_SOURCE="$src")
    ;;
  fetchcontent)
    # The files of this tree as they are now (tracked and new, not ignored), committed to a
    # repository of their own: what a user's FetchContent would clone.
    # A source tarball or `git archive` export has no .git: then every file of the tree is taken,
    # except version-control data and build trees (build*, and BUILD_DIR when it is inside).
    mkdir "$work/repo"
    if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      git -C "$src" ls-files -z --cached --others --exclude-standard |
        tar -C "$src" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$work/repo" -xf -
    else
      excludes=(--exclude-vcs --exclude='./build*')
      case $build/ in "$src"/*) excludes+=(--exclude="./${build#"$src"/}") ;; esac
      tar -C "$src" "${excludes[@]}" -cf - . | tar -C "$work/repo" -xf -
    fi
    git -C "$work/repo" init -q
    git -C "$work/repo" add -A
    git -C "$work/repo" -c user.name=c10dtest -c user.email=c10dtest@localhost \
      commit -q -m "c10dtest snapshot"
    args+=(-DC10DTEST_GIT="$work/repo" -DC10DTEST_TAG="$(git -C "$work/repo" rev-parse HEAD)")
    ;;
  *)
    echo "usage: $0 package|subdirectory|fetchcontent BUILD_DIR" >&2
    exit 2
    ;;
esac

cmake -S "$src/test/package/consumer" -B "$work/build" "${args[@]}" >/dev/null
cmake --build "$work/build" -j "$(nproc)" >/dev/null
# One entry per world size, with the processors, labels, timeout and Open MPI settings asked for.
ctest --test-dir "$work/build" --show-only=json-v1 >"$work/entries.json"
cmake -DJSON="$work/entries.json" -DROOT="$([ "$(id -u)" -eq 0 ] && echo 1 || echo 0)" \
  -P "$src/test/package/check_entries.cmake"
ctest --test-dir "$work/build" --output-on-failure
# What an IDE lists: `ctest -N` names the per-test entries.
ctest --test-dir "$work/build" -N >"$work/list.log"
for t in AllReduce.SumsEveryRank AllReduce.ShardedModelMatchesItsReference; do
  for n in 1 2; do
    grep -qE "Test +#[0-9]+: $t\.np$n\$" "$work/list.log" ||
      { cat "$work/list.log"; echo "ctest -N does not list $t.np$n" >&2; exit 1; }
  done
done
# As an IDE reruns one test: exactly that test, at that world size.
ctest --test-dir "$work/build" -R '^AllReduce\.SumsEveryRank\.np2$' -V >"$work/one.log" 2>&1 ||
  { cat "$work/one.log"; exit 1; }
grep -q "100% tests passed, 0 tests failed out of 1$" "$work/one.log" &&
  grep -q "Running 1 test from 1 test suite\.$" "$work/one.log" &&
  grep -q "Note: c10dtest runs 2 ranks" "$work/one.log" &&
  grep -q "\[       OK \] AllReduce\.SumsEveryRank (" "$work/one.log" ||
  { cat "$work/one.log"; echo "ctest -R AllReduce.SumsEveryRank.np2 did not run that test alone" >&2; exit 1; }
