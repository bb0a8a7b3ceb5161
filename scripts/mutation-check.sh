#!/usr/bin/env bash
# Mutation check of the driver tests (test/driver/driver_test.cpp).
#
# The driver tests run child suites that fail, hang and crash on purpose and assert on how the
# run ends. This script shows that each driver test FAILS when the behaviour it checks is
# broken: for every row of the table below it plants one bug (a perl substitution) in the
# library (src/, include/) or, where the behaviour lives there, in a child suite
# (test/children/), rebuilds, runs the driver test(s) the row names and expects them to fail.
# test/driver/ itself is never mutated.
#
#   CAUGHT  the driver test failed on the mutant (good)
#   MISSED  the driver test passed on the mutant: it does not check what the row breaks
#   ERROR   the mutation no longer applies (the source changed) or the mutant did not build
#
# Usage: scripts/mutation-check.sh [BUILD_DIR] [NAME_REGEX]
#   BUILD_DIR   build directory, relative to the repository root (default build-mutants; never
#               `build`). Configured here when it has no CMakeCache.txt.
#   NAME_REGEX  only the rows whose name matches this (grep -E) regex (default: all)
#
# Every file is restored after its row, also when the run is interrupted (trap), and the build
# directory is rebuilt from the restored sources at the end. Per-row logs (build and driver
# output) are left in BUILD_DIR/mutation-logs/. Exit status 0 only if every selected row was
# CAUGHT.
#
# Run it from a separate git worktree when somebody else works in the checkout: it edits the
# sources while it runs. Takes about a minute per mutation on 2 cores (a few rows wait for a
# watchdog or a driver time limit: up to ~3 minutes), plus the first build of BUILD_DIR
# (15-25 minutes on 2 cores).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BUILD=${1:-build-mutants}
NAME_REGEX=${2:-.}
BUILD=${BUILD%/}
case "$BUILD" in
  build | ./build | "$ROOT/build")
    echo "mutation-check: refusing to use the build directory 'build' (pass another one)" >&2
    exit 2
    ;;
esac
JOBS=${MUTATION_JOBS:-2}
RUN_LIMIT=600
TARGETS=(driver_test child_suite planted_bugs printer_suite)

# ---- the table ---------------------------------------------------------------------------------
# mut NAME FILE FILTER PERL WHAT
#   FILE    the file the bug goes into (src/, include/ or test/children/)
#   FILTER  --gtest_filter of the driver test(s) that must now fail
#   PERL    applied with `perl -0pi -e` (the whole file is one string: \n matches line ends)
#   WHAT    what the bug breaks
NAMES=() FILES=() FILTERS=() PERLS=() WHATS=()
mut() {
  NAMES+=("$1") FILES+=("$2") FILTERS+=("$3") PERLS+=("$4") WHATS+=("$5")
}
CS=Launchers/ChildSuite

mut rank-tag-dropped src/gtest/printer.cpp \
  "$CS.FailureOnlyOnRankTwoIsReportedOnceNamingRankTwo/Mpirun" \
  's/const std::string message = tag \+ part->message;/const std::string message = part->message;/' \
  "rank 0 prints another rank's failure without '[rank R of W]'"

mut failed-rank-keeps-groups src/gtest/listener.cpp \
  "$CS.RankLeavingEarlyDoesNotHangItsPeersAndTheNextTestRuns/Mpirun" \
  's/  if \(mine\.status == \x27F\x27\) world_\.release_process_groups\(\);\n(  const std::vector<RankResult> results = exchange\(world_\.test_key\(\), mine\);\n\n)/$1/' \
  "a rank whose test failed keeps its process groups: peers hang in the collective"

mut cached-groups-kept src/gtest/world.cpp \
  "$CS.AFailedTestDropsTheCachedGroupsAndNobodyWaitsOnThem/Mpirun" \
  's/\n  for \(auto& \[key, group\] : group_cache_\) release_process_group\(group, failed\);\n  group_cache_\.clear\(\);\n/\n/' \
  "releasing the groups after a failure leaves new_group()'s cache alive"

mut no-stack-on-timeout src/gtest/watchdog.cpp \
  "$CS.SleepingRankHitsTheWatchdogWithItsStack/Mpirun" \
  's/posted \? "" : capture_main_stack\(std::chrono::milliseconds\(2000\)\)/posted ? "" : std::string()/' \
  "the watchdog no longer captures the stuck rank's main-thread stack"

mut no-report-when-run-ended src/gtest/verdict.cpp \
  "$CS.RunEndedByTheWatchdogStillLeavesAnXmlReport/Mpirun" \
  's/(void Lifeline::end_run\(.*?\n)  report_\.write_fault\(cause\);\n/$1/s' \
  "rank 0 ends the run (timeout, death) without writing the fault into the XML report"

mut finished-ranks-counted-stuck src/gtest/watchdog.cpp \
  "$CS.HungCollectiveHitsTheWatchdog/Mpirun" \
  's/cp_->posted\(key \+ "\/res", r\)/cp_->posted(key, r)/' \
  "the watchdog looks up the wrong exchange: ranks that finished are reported as stuck"

mut set-timeout-ignored src/gtest/watchdog.cpp \
  "$CS.PerTestTimeoutOverridesTheRunTimeout/Mpirun" \
  's/\n  if \(deadline_ != Clock::time_point::max\(\)\) deadline_ = test_start_ \+ timeout;\n/\n/' \
  "set_timeout() records the limit but does not move the running test's deadline"

mut cut-off-ranks-stay src/gtest/verdict.cpp \
  "$CS.RanksCutOffFromRankZeroEndOnTheirOwn/Mpirun" \
  's/(void Lifeline::report_rank_zero\(.*?)flush_and_exit\(kExitRankDied\);/${1}wait_forever();/s' \
  "a rank that lost rank 0 says so but never exits (it waits for a rank 0 that never answers)"

mut crash-not-announced src/gtest/signals.cpp \
  "$CS.SegfaultOnRankThreeIsNamed/Mpirun" \
  's/\n  Lifeline::announce_crash\(what, [^\n]*\n/\n/' \
  "the fatal-signal handler no longer tells rank 0 (or the note file) what crashed"

mut sigabrt-unhandled src/gtest/signals.cpp \
  "$CS.AbortOnRankOneIsNamed/Mpirun" \
  's/kFatalSignals\[\] = \{SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT\}/kFatalSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL}/' \
  "SIGABRT is no longer handled: an abort is not reported as a crash"

mut silent-exit-not-blamed src/gtest/verdict.cpp \
  "$CS.ExitOnRankOneIsNamed/Mpirun" \
  's/if \(p\.kind == \x27C\x27 \|\| \(p\.closed && !p\.bye && !p\.lost_zero && p\.kind == 0\)\) \{/if (p.kind == \x27C\x27) {/' \
  "a rank whose process ended without a word is not blamed"

mut survivors-skip-report src/gtest/verdict.cpp \
  "$CS.ReportSurvivesEveryDeathAndBlamesTheRightRank/Mpirun" \
  's/\n  report_\.write_fault\(line\);\n/\n/' \
  "when rank 0 dies, the surviving ranks no longer complete the XML report"

mut late-sigterm-dropped src/gtest/lifeline.cpp \
  "$CS.SigtermJustBeforeTheEndNeverPasses/Mpirun" \
  's/\n  if \(!g_claimed\.load\(\) && own_signal_ != 0\) decide\(\);\n/\n/' \
  "a SIGTERM still being settled when the lifeline closes is dropped (the run passes)"

mut report-not-written-per-test src/gtest/listener.cpp \
  "$CS.ReportHoldsEveryFinishedTestWhileTheRunGoesOn/Mpirun" \
  's/(  world_\.report_->add_test\(info\);\n)  world_\.report_->write\(\);\n/$1/' \
  "the XML report is written only at the end, not after each test"

mut fork-child-is-a-rank src/gtest/signals.cpp \
  "$CS.CrashInAGtestDeathTestStaysInItsChild/Mpirun" \
  's/return g_rank_pid\.load\(\) == getpid\(\);/return g_rank_pid.load() != 0;/' \
  "a forked death-test child takes itself for the rank: its crash is announced and exits 4"

mut peers-heartbeat-unchecked src/gtest/watchdog.cpp \
  "$CS.StoppedRankIsNamedAndBlamesNobodyWhenResumed/Mpirun" \
  's/\n    if \(cp_->rank\(\) == 0\) check_peers\(\);\n/\n/' \
  "rank 0 no longer checks the other ranks' heartbeats: a stopped rank is never named"

mut skip-not-adopted src/gtest/listener.cpp \
  "$CS.SkipIsASkipOnEveryRank/Mpirun" \
  's/if \(!any_failed && !skipping\.empty\(\) && mine\.status != \x27S\x27\) \{/if (false) {/' \
  "a test skipped on one rank counts as passed on the others"

mut unavailable-world-runs src/gtest/distributed_test.cpp \
  "$CS.NcclWorldThatCannotRunHereSkipsEveryTestWithTheReason/Mpirun" \
  's/\n  if \(!why\.empty\(\)\) GTEST_SKIP\(\) << why;\n/\n/' \
  "DistributedTest::SetUp no longer skips a world that cannot run here"

mut device-cuda-ignored src/gtest/world.cpp \
  "$CS.CudaTensorsWithoutAGpuSkipEveryTestWithTheReason/Mpirun" \
  's/const bool cuda = backend_ == BackendKind::kNccl \|\| options_\.device == "cuda";/const bool cuda = backend_ == BackendKind::kNccl;/' \
  "--c10dtest_device=cuda is ignored with gloo (the tests run on the CPU)"

mut nccl-cpu-accepted src/gtest/world.cpp \
  "$CS.NcclWithCpuTensorsIsAConfigError/Mpirun" \
  's/if \(backend_ == BackendKind::kNccl && options_\.device == "cpu"\) \{/if (false) {/' \
  "--c10dtest_backend=nccl with --c10dtest_device=cpu is not rejected"

mut fixed-store-port src/control/control_plane.cpp \
  "$CS.TwoSuitesStartedAtOnceBothPass/Mpirun" \
  's/auto tcp = make_tcp\("127\.0\.0\.1", 0, true, size, timeout\);/auto tcp = make_tcp("127.0.0.1", 29517, true, size, timeout);/' \
  "rank 0's store listens on a fixed port: two runs on one host collide"

mut failures-not-adopted src/gtest/listener.cpp \
  "$CS.OneXmlReportFromRankZeroWithEveryRanksFailures/Mpirun" \
  's/\n    if \(r == world_\.rank\(\)\) continue;\n/\n    continue;\n/' \
  "ranks stop adopting other ranks' failures: rank 0's report lacks them"

mut seed-differs-per-rank src/gtest/main.cpp \
  "$CS.ShuffleUsesOneSeedOnEveryRank/Mpirun" \
  's/std::stoi\(cp\.get\("random_seed", options\.rendezvous_timeout\)\)/std::stoi(cp.get("random_seed", options.rendezvous_timeout)) + cp.rank()/' \
  "each rank shuffles with its own seed"

mut colour-forced-off src/gtest/main.cpp \
  "$CS.BriefOutputAndColourFollowGtestFlags/Mpirun" \
  's/ &&\n\s*strcasecmp\(GTEST_FLAG_GET\(color\)\.c_str\(\), "auto"\) == 0\) \{/) {/' \
  "under MPI launchers colour is always off, even with GTEST_COLOR=yes"

mut logs-not-redirected src/gtest/main.cpp \
  "$CS.PerRankLogsGoToTheLogDirectory/Mpirun" \
  's/\n    if \(!options\.log_dir\.empty\(\) && launch\.rank != 0\) redirect_output\(options\.log_dir, launch\.rank\);\n/\n/' \
  "--c10dtest_log_dir is ignored: ranks > 0 keep writing to the shared output"

mut list-on-every-rank src/gtest/main.cpp \
  "$CS.ListTestsPrintsOnce/Mpirun" \
  's/if \(launch\.rank != 0 && std::freopen/if (false && std::freopen/' \
  "--gtest_list_tests prints the list on every rank"

mut suite-setup-failure-not-shared src/gtest/listener.cpp \
  "$CS.SuiteSetUpFailureOnOneRankSkipsTheSuiteEverywhereAndIsNamed/Mpirun" \
  's/if \(!failed\.empty\(\) && mine\.status != \x27F\x27\) \{/if (false) {/' \
  "a SetUpTestSuite failure on one rank does not skip the suite on the others"

mut suite-code-unwatched src/gtest/listener.cpp \
  "$CS.HangInTearDownTestSuiteHitsTheWatchdog/Mpirun" \
  's/(void DistributedListener::arm_for_suite\(.*?)watchdog_\.arm\(what, world_\.test_key\(\)\);/${1}watchdog_.disarm();/s' \
  "the watchdog is disarmed during suite-level code (SetUp/TearDownTestSuite)"

mut dtype-unchecked src/verify/check.cpp \
  "Ranks/PlantedBugs.EachIsCaughtNamingItsKeyAndBothStrategiesAgree/2" \
  's/if \(options\.compare\.check_dtype && dtype != expected\.scalar_type\(\)\) \{/if (false) {/' \
  "the shard-local verifier no longer compares dtypes"

mut supervisor-misses-signals src/launch/spawn.cpp \
  "SelfSpawnOnly.RankKilledBeforeMainIsNamedInTheReport" \
  's/const bool signaled = WIFSIGNALED\(status\);/const bool signaled = false;/' \
  "the self-spawn supervisor does not notice a rank killed by a signal"

mut test-lists-unchecked src/gtest/listener.cpp \
  "MpirunOnly.DifferentTestListsOnTheRanksAreAClearError" \
  's/\{ return h == hashes\[0\]; \}\)\) \{/{ return true; })) {/' \
  "ranks with different test lists are not detected"

mut torchrun-needs-local-rank src/launch/launch.cpp \
  "TorchrunStyle.PassingSuitePassesOnEveryRank" \
  's/\} else if \(env\.has\("RANK"\) && env\.has\("WORLD_SIZE"\)\) \{/} else if (env.has("RANK") \&\& env.has("WORLD_SIZE") \&\& env.has("LOCAL_RANK")) {/' \
  "RANK/WORLD_SIZE without LOCAL_RANK is not taken for a torchrun-style launch"

mut summary-kept-across-repeats src/gtest/listener.cpp \
  "TorchrunStyle.GtestFlagsWorkWithoutALauncher" \
  's/\n  where_\.clear\(\);\n/\n/' \
  "--gtest_repeat: the per-rank summary lines of earlier iterations are printed again"

mut closed-socket-ignored src/gtest/lifeline.cpp \
  "TorchrunStyle.RankThatExitsIsNamedAtOnce" \
  's/(    rank_zero_died\(\);\n    return;\n  \}\n)  settle_until_ = std::min\(settle_until_, Clock::now\(\) \+ kSettle\);\n/$1/' \
  "rank 0 does not act when a rank's lifeline connection closes (only the heartbeat finds it)"

mut start-stall-undetected src/control/control_plane.cpp \
  "TorchrunStyle.RankStoppedAtStartIsNamedWithinTheHeartbeatTimeout" \
  's/const bool stalled = stall < std::chrono::milliseconds::max\(\) &&/const bool stalled = false \&\& stall < std::chrono::milliseconds::max() \&\&/' \
  "a rank missing at the start is only found after the rendezvous timeout"

mut rank-upper-bound-unchecked src/launch/launch.cpp \
  "TorchrunStyle.RankOutsideTheWorldIsAClearError" \
  's/if \(info\.rank < 0 \|\| info\.rank >= info\.world_size\) \{/if (info.rank < 0) {/' \
  "RANK is not checked against WORLD_SIZE"

# ---- the harness -------------------------------------------------------------------------------
LOGS="$BUILD/mutation-logs"
BACKUP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/mutation-check.XXXXXX")
PENDING=""  # the file that holds a mutant right now
CHILD=""    # the build or driver run in progress (the leader of its own session)

restore() {
  if [[ -n "$PENDING" ]]; then
    # A plain copy, so the restored file is newer than the mutant's object and gets rebuilt.
    cp "$BACKUP_DIR/original" "$PENDING"
    PENDING=""
  fi
}
on_exit() {
  local rc=$?
  restore
  rm -rf "$BACKUP_DIR"
  exit "$rc"
}
on_signal() {
  # The build or driver run in progress, with its children; then the ranks the driver started
  # (in sessions of their own): each carries C10DTEST_DRIVER_TAG=<driver pid>-... .
  if [[ -n "$CHILD" ]]; then
    local drivers pid env
    drivers=$(pgrep -P "$CHILD" || true)
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    for pid in $drivers; do
      for env in /proc/[0-9]*/environ; do
        if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -q "^C10DTEST_DRIVER_TAG=$pid-"; then
          env=${env#/proc/}
          kill -KILL "${env%/environ}" 2>/dev/null || true
        fi
      done
    done
  fi
  echo "mutation-check: interrupted; sources restored ($BUILD still holds a mutant build until" \
    "it is rebuilt)" >&2
  exit 130
}
trap on_exit EXIT
trap on_signal INT TERM HUP

# Runs a command in a session of its own and waits for it. A signal interrupts the wait at once
# (bash defers a trap until a foreground command ends, and ignores SIGINT when that command
# exits on it normally, as make does), and on_signal then ends the command's whole group.
in_background() {  # in_background LOG COMMAND...: appends the command's output to LOG
  local log=$1
  shift
  setsid "$@" </dev/null >>"$log" 2>&1 &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

build() {  # build LOG
  : >"$1"
  in_background "$1" cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]}"
}

if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  echo "mutation-check: configuring $BUILD"
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DC10DTEST_WERROR=OFF \
    -DC10DTEST_BUILD_BENCH=OFF -DC10DTEST_BUILD_EXAMPLES=OFF >/dev/null
fi
mkdir -p "$LOGS"
echo "mutation-check: building the unmutated targets in $BUILD"
if ! build "$LOGS/initial-build.log"; then
  echo "mutation-check: the unmutated sources do not build; see $LOGS/initial-build.log" >&2
  exit 2
fi

selected=0 caught=0 missed=0 errors=0
start_all=$SECONDS
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]} file=${FILES[$i]} filter=${FILTERS[$i]} expr=${PERLS[$i]}
  grep -Eq -- "$NAME_REGEX" <<<"$name" || continue
  selected=$((selected + 1))
  start=$SECONDS
  log="$LOGS/$name.log"
  status="" note=""
  case "$file" in
    src/* | include/* | test/children/*) ;;
    *) status=ERROR note="file $file is outside src/, include/ and test/children/" ;;
  esac
  if [[ -z "$status" && ! -f "$file" ]]; then
    status=ERROR note="no file $file"
  fi
  if [[ -z "$status" ]]; then
    cp "$file" "$BACKUP_DIR/original"
    PENDING=$file
    if ! perl -0pi -e "$expr" "$file" 2>"$log"; then
      status=ERROR note="perl failed: $(head -c 200 "$log")"
    elif cmp -s "$file" "$BACKUP_DIR/original"; then
      status=ERROR note="mutation no longer applies"
    fi
  fi
  if [[ -z "$status" ]]; then
    { echo "### $name: $file"; diff -u "$BACKUP_DIR/original" "$file" || true; } >"$log"
    if ! build "$log.build"; then
      status=ERROR note="mutant does not build (see $log.build)"
    fi
  fi
  if [[ -z "$status" ]]; then
    rc=0
    in_background "$log" timeout -k 5 "$RUN_LIMIT" "$BUILD/test/driver_test" \
      --gtest_filter="$filter" --gtest_color=no || rc=$?
    if ! grep -q '^\[ RUN      \]' "$log"; then
      status=ERROR note="the filter selects no test"
    elif ((rc != 0)); then
      status=CAUGHT
      if ((rc == 124 || rc == 137)); then note="driver_test timed out"; fi
    else
      status=MISSED
      if grep -q '^\[  SKIPPED \]' "$log"; then note="the driver test was skipped"; fi
    fi
  fi
  restore
  case "$status" in
    CAUGHT) caught=$((caught + 1)) ;;
    MISSED) missed=$((missed + 1)) ;;
    *) errors=$((errors + 1)) ;;
  esac
  printf '%-6s  %-32s  %s  %ds%s\n' "$status" "$name" "$filter" $((SECONDS - start)) \
    "${note:+  ($note)}"
done

if ((selected == 0)); then
  echo "mutation-check: no row matches '$NAME_REGEX'" >&2
  exit 2
fi
echo "mutation-check: rebuilding $BUILD from the restored sources"
if ! build "$LOGS/final-build.log"; then
  echo "mutation-check: the restored sources do not build; see $LOGS/final-build.log" >&2
  exit 2
fi
echo "mutation-check: $selected mutations: $caught caught, $missed missed, $errors errors" \
  "($((SECONDS - start_all))s)"
((caught == selected))
