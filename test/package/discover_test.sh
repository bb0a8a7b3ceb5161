#!/usr/bin/env bash
# c10dtest_add_test(... DISCOVER)'s listing script (cmake/C10dtestDiscover.cmake) on stand-in
# binaries: gtest's list with typed, parameterised and disabled tests becomes one entry per test
# and world size, each running its test alone with its launch command, labels and environment;
# a listing that fails, hangs or prints something else fails the build with a message naming
# the binary, and leaves no stale entries behind.
# Usage: test/package/discover_test.sh   (CTest runs it as discover_test)
set -euo pipefail
script=$(cd "$(dirname "$0")/../../cmake" && pwd)/C10dtestDiscover.cmake
work=$(mktemp -d "${TMPDIR:-/tmp}/c10dtest-discover.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "discover_test: $*" >&2; exit 1; }

# CTest lists a command only when its program exists: echo stands in for the binary, env for
# the launcher.
bin=$(type -P echo)
launcher=$(type -P env)
cat >"$work/launch.cmake" <<LAUNCH
set(_c10dtest_sizes 1 4)
set(_c10dtest_timeout 120)
set(_c10dtest_cmd_1 [==[$bin;--c10dtest_timeout=96;]==])
set(_c10dtest_env_1 [==[]==])
set(_c10dtest_labels_1 [==[c10dtest;np1;bare;]==])
set(_c10dtest_cmd_4 [==[$launcher;-n;4;$bin;--c10dtest_timeout=96;--extra=a b]==])
set(_c10dtest_env_4 [==[OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1]==])
set(_c10dtest_labels_4 [==[c10dtest;np4;mpirun;slow]==])
LAUNCH

stand_in() {  # name, then the lines it prints; exit code from $code
  local f=$work/$1
  shift
  { echo '#!/bin/sh'; for l in "$@"; do printf 'printf "%%s\\n" "%s"\n' "$l"; done; echo "exit ${code:-0}"; } >"$f"
  chmod +x "$f"
  echo "$f"
}
discover() {  # binary, output
  cmake -D BINARY="$1" -D LAUNCH="$work/launch.cmake" -D OUTPUT="$2" -D PREFIX=p. -D TIMEOUT=3 \
    -P "$script" >"$work/log" 2>&1
}

good=$(stand_in good "Plain." "  Passes" "  DISABLED_Off" "Typed/0.  # TypeParam = int" \
                     "  IsIntegral" "Small/Param." "  IsOdd/0  # GetParam() = 1")
discover "$good" "$work/tests.cmake" || { cat "$work/log"; fail "a good list failed"; }
# The entries as CTest reads them: a project whose tests are these.
mkdir "$work/project"
cp "$work/tests.cmake" "$work/project/CTestTestfile.cmake"
ctest --test-dir "$work/project" --show-only=json-v1 >"$work/entries.json"
python3 - "$work/entries.json" "$bin" "$launcher" <<'PY' || fail "wrong entries"
import json, sys
bin, launcher = sys.argv[2], sys.argv[3]
tests = {t["name"]: t for t in json.load(open(sys.argv[1]))["tests"]}
names = [f"p.{t}.np{n}" for t in ("Plain.Passes", "Plain.DISABLED_Off", "Typed/0.IsIntegral",
                                   "Small/Param.IsOdd/0") for n in (1, 4)]
assert sorted(tests) == sorted(names), sorted(tests)
props = lambda t: {p["name"]: p["value"] for p in t.get("properties", [])}
four = tests["p.Small/Param.IsOdd/0.np4"]
assert four["command"] == [launcher, "-n", "4", bin, "--c10dtest_timeout=96",
                           "--extra=a b", "--gtest_filter=Small/Param.IsOdd/0"], four["command"]
p = props(four)
assert p["PROCESSORS"] == 4 and p["TIMEOUT"] == 120, p
assert set(p["LABELS"]) >= {"c10dtest", "np4", "mpirun", "slow"}, p
assert p["ENVIRONMENT"] == ["OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"], p
one = tests["p.Plain.Passes.np1"]
assert one["command"] == [bin, "--c10dtest_timeout=96", "--gtest_filter=Plain.Passes"], one
assert "ENVIRONMENT" not in props(one), props(one)
assert props(tests["p.Plain.DISABLED_Off.np4"]).get("DISABLED") is True
assert "DISABLED" not in props(tests["p.Plain.Passes.np4"])
print(f"{len(tests)} entries as expected")
PY

# Bad listings: the build fails naming the binary, and the old entries are gone.
check_bad() {  # binary, what the message must say
  cp "$work/tests.cmake" "$work/stale.cmake"
  if discover "$1" "$work/stale.cmake"; then fail "$(basename "$1"): the listing passed"; fi
  local said
  said=$(tr -s ' \n' '  ' <"$work/log")  # CMake wraps long messages
  grep -qF "$2" <<<"$said" || { cat "$work/log"; fail "$(basename "$1"): no '$2' in the message"; }
  grep -qF "$1" <<<"$said" || fail "$(basename "$1"): the message does not name the binary"
  [ ! -e "$work/stale.cmake" ] || fail "$(basename "$1"): stale entries left behind"
}
code=3 check_bad "$(code=3 stand_in crashes "Plain." "  Passes")" "failed: 3"
check_bad "$(stand_in chatty "starting up" "Plain." "  Passes")" "printed 'starting up', which is not gtest's list"
check_bad "$(stand_in orphan "  Passes")" "before any suite"
printf '#!/bin/sh\nsleep 30\n' >"$work/hangs" && chmod +x "$work/hangs"
check_bad "$work/hangs" "within 3 s"
echo "discover_test: passed"
