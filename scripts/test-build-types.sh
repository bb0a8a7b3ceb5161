#!/usr/bin/env bash
# Runs the whole suite (scripts/test.sh: build, then every CTest entry) in other CMake build
# types, each from a copy of this tree without .git, as a release tarball or a `git archive`
# export is: the FetchContent check and everything else must work without version control.
#
#   scripts/test-build-types.sh [TYPE...]   (default: Debug Release MinSizeRel; RelWithDebInfo
#                                            is scripts/test.sh's own)
#
# Environment:
#   C10DTEST_CTEST_ARGS  more ctest arguments for every type, e.g. "-LE package" to leave out the
#                        three package checks (each builds a project; about 10 minutes in all)
#   C10DTEST_TMP         where the copies and builds go (default ${TMPDIR:-/var/tmp}); about
#                        1.5 GB per type, removed after a type passes
# Each type takes about 30 minutes on 2 cores (20 without the package checks).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Debug Release MinSizeRel)
for t in "${types[@]}"; do
  case $t in Debug | Release | RelWithDebInfo | MinSizeRel) ;;
    *) echo "c10dtest: unknown build type '$t' (Debug, Release, RelWithDebInfo, MinSizeRel)" >&2; exit 2 ;;
  esac
done
scripts/install-deps.sh
base=$(mktemp -d "${C10DTEST_TMP:-${TMPDIR:-/var/tmp}}/c10dtest-types.XXXXXX")
summary=()
for t in "${types[@]}"; do
  start=$SECONDS
  tree=$base/src-$t
  build=$base/build-$t
  mkdir -p "$tree"
  # The tree as a tarball holds it: every file but version-control data and build trees.
  tar -C "$src" --exclude-vcs --exclude='./build*' --exclude='./.gloo-include' -cf - . |
    tar -C "$tree" -xf -
  echo "=== c10dtest: $t, from $tree (no .git)"
  # shellcheck disable=SC2086
  if (cd "$tree" && C10DTEST_BUILD_DIR="$build" C10DTEST_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=$t" \
        scripts/test.sh ${C10DTEST_CTEST_ARGS:-}); then
    summary+=("PASS  $t  $((SECONDS - start)) s")
    rm -rf "$tree" "$build"
  else
    summary+=("FAIL  $t  $((SECONDS - start)) s  (kept: $tree, $build)")
  fi
done
echo "=== c10dtest: build types"
printf '%s\n' "${summary[@]}"
rmdir "$base" 2>/dev/null || true
! printf '%s\n' "${summary[@]}" | grep -q '^FAIL'
