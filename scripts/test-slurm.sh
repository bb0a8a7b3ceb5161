#!/usr/bin/env bash
# Proves that c10dtest runs under Slurm's srun: installs Slurm and MUNGE when missing, starts a
# private single-node cluster (munged, slurmctld, slurmd on localhost, free ports, every file in
# one temp dir), runs the example suites with srun at 2 and 4 tasks, a child suite whose test
# fails on rank 2, the child suite with gtest's shuffle/repeat/brief flags, and the CTest entries
# that c10dtest_add_test(... LAUNCHER srun) registers in the consumer project of test/package
# (built against this build's install); asserts on their exit codes and output, then stops every
# daemon it started and removes its temp dir, on every exit path. Apart from installing packages
# it writes nothing outside that temp dir: the daemons get their configuration, key, sockets,
# state and logs there.
# Usage: scripts/test-slurm.sh            (run as root, or with sudo available for apt-get)
#   C10DTEST_BUILD_DIR  build tree holding examples/ and test/child_suite (default: build)
#   SRUN_TIMEOUT        seconds allowed to each srun (default: 180)
# Exits non-zero on any failure, after printing what failed and the logs that explain it.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${C10DTEST_BUILD_DIR:-build}
srun_timeout=${SRUN_TIMEOUT:-180}
up_timeout=60

say() { echo "test-slurm: $*"; }
die() { echo "test-slurm: FAILED: $*" >&2; exit 1; }

# --- Binaries, checked before anything is installed or started. -------------------------------
binaries=("$build/examples/collectives_example" "$build/examples/verify_state_dict_example"
          "$build/test/child_suite")
for b in "${binaries[@]}"; do
  [ -x "$b" ] || die "$b is missing; build it first (scripts/build.sh)"
done

# --- Packages, installed only when missing. ----------------------------------------------------
packages=(slurm-wlm munge)
scripts/install-deps.sh "${packages[@]}"
# The daemons live in /usr/sbin, which is not on every user's PATH.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin ;; esac
for tool in munged munge unmunge slurmctld slurmd srun scontrol sinfo squeue scancel timeout; do
  command -v "$tool" >/dev/null || die "$tool not found (packages: ${packages[*]})"
done

# --- Private temp dir and cleanup on every exit path. -----------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/c10dtest-slurm.XXXXXX")
chmod 0700 "$tmp"
daemon_pids=()   # "name:pid", stopped in reverse order
srun_pid=
# Sends TERM to a pid we started, waits up to 10 s, then KILLs it.
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    # A child of this shell lingers as a zombie until reaped.
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? entry i pid
  set +e
  trap - EXIT INT TERM
  # An srun still running (this script was interrupted): timeout passes the TERM on to srun,
  # which cancels its job step.
  [ -n "$srun_pid" ] && stop_pid "$srun_pid"
  # Jobs first, while slurmctld and slurmd can still end them (and their slurmstepd).
  if [ -n "${SLURM_CONF:-}" ] && [ ${#daemon_pids[@]} -ge 2 ]; then
    timeout 10 scancel --quiet --full --user="$(id -un)" 2>/dev/null
    for i in $(seq 1 20); do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  for ((i = ${#daemon_pids[@]} - 1; i >= 0; i--)); do
    entry=${daemon_pids[i]}
    stop_pid "${entry#*:}"
  done
  # Whatever survived (a slurmstepd, a task) works in or holds a file of the temp dir: end those
  # processes by pid, never by name.
  for pid in $(find /proc/[0-9]*/cwd /proc/[0-9]*/fd/ -maxdepth 1 \( -lname "$tmp" -o -lname "$tmp/*" \) \
                2>/dev/null | cut -d/ -f3 | sort -u); do
    [ "$pid" = "$$" ] && continue
    say "ending leftover process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    kill -KILL "$pid" 2>/dev/null
  done
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# The binaries are copied so that a rebuild of the build tree during the run cannot change them.
mkdir -p "$tmp/bin" "$tmp/run" "$tmp/tmp" "$tmp/munge" "$tmp/state" "$tmp/spool" "$tmp/log"
cp "${binaries[@]}" "$tmp/bin/"
chmod 0700 "$tmp/tmp"
# munged refuses to start unless its key is 0600 and its socket and log dirs are not writable by
# group or others; clients of other users need the socket dir searchable (0755).
chmod 0755 "$tmp/munge"

print_log_tail() {
  local f
  for f in "$@"; do
    [ -f "$f" ] || continue
    echo "----- last lines of $(basename "$f") -----" >&2
    tail -n 40 "$f" >&2
  done
}

# --- munged on a private socket with a fresh key. ---------------------------------------------
mungekey --create --keyfile="$tmp/munge/munge.key" >/dev/null 2>&1 ||
  { dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none; }
chmod 0600 "$tmp/munge/munge.key"
munge_socket=$tmp/munge/munge.socket
munged --foreground --force --socket="$munge_socket" --key-file="$tmp/munge/munge.key" \
  --pid-file="$tmp/munge/munged.pid" --seed-file="$tmp/munge/munged.seed" \
  --log-file="$tmp/log/munged.log" </dev/null >>"$tmp/log/munged.out" 2>&1 &
munged_pid=$!
daemon_pids+=("munged:$munged_pid")
for i in $(seq 1 $((up_timeout * 2))); do
  if munge --socket="$munge_socket" -n 2>/dev/null | unmunge --socket="$munge_socket" >/dev/null 2>&1
  then break; fi
  kill -0 "$munged_pid" 2>/dev/null || { print_log_tail "$tmp/log/munged.out" "$tmp/log/munged.log"; die "munged exited at start"; }
  [ "$i" -eq $((up_timeout * 2)) ] && { print_log_tail "$tmp/log/munged.out" "$tmp/log/munged.log"
    die "munged did not answer on $munge_socket within ${up_timeout}s"; }
  sleep 0.5
done

# --- slurm.conf for one node on localhost. ----------------------------------------------------
# A TCP port nobody listens on (nor uses) now, read from /proc so that no extra tool is needed.
port_in_use() {
  local hex
  hex=$(printf ':%04X' "$1")
  awk -v h="$hex" 'substr($2, length($2) - 4) == h { found = 1 } END { exit !found }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    [ "$p" = "${1:-}" ] && continue
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  die "found no free TCP port"
}
ctld_port=$(free_port)
slurmd_port=$(free_port "$ctld_port")
node=$(uname -n)
node=${node%%.*}
user=$(id -un)
export SLURM_CONF=$tmp/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=c10dtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$munge_socket
CredType=cred/munge
# Daemons listen on 127.0.0.1 (the addresses given here), not on every interface.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/state/slurmctld.pid
SlurmdPidFile=$tmp/spool/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
MailProg=/bin/true
SlurmctldDebug=info
SlurmdDebug=info
TmpFS=$tmp/tmp
# No cgroups (containers often lack them) and no PMI: c10dtest binaries are not MPI programs
# (they never call MPI_Init), so srun needs no --mpi=pmix; with a PMI plugin srun would set
# PMI_RANK, which c10dtest would take for an MPICH launch.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=5
# The node is declared with 4 CPUs so that 4 tasks fit on a smaller machine; config_overrides
# makes slurmd accept a node with fewer CPUs than declared.
SlurmdParameters=config_overrides
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node CPUs=4 State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
EOF

# --- slurmctld and slurmd, in the foreground of a background job each. -------------------------
slurmctld -D -i -f "$SLURM_CONF" </dev/null >>"$tmp/log/slurmctld.out" 2>&1 &
ctld_pid=$!
daemon_pids+=("slurmctld:$ctld_pid")
for i in $(seq 1 $((up_timeout * 2))); do
  [[ "$(scontrol ping 2>/dev/null || true)" == *"is UP"* ]] && break
  kill -0 "$ctld_pid" 2>/dev/null ||
    { print_log_tail "$tmp/log/slurmctld.out" "$tmp/log/slurmctld.log"; die "slurmctld exited at start"; }
  [ "$i" -eq $((up_timeout * 2)) ] && { print_log_tail "$tmp/log/slurmctld.out" "$tmp/log/slurmctld.log"
    die "slurmctld did not answer on 127.0.0.1:$ctld_port within ${up_timeout}s"; }
  sleep 0.5
done
slurmd -D -f "$SLURM_CONF" -N "$node" </dev/null >>"$tmp/log/slurmd.out" 2>&1 &
slurmd_pid=$!
daemon_pids+=("slurmd:$slurmd_pid")
for i in $(seq 1 $((up_timeout * 2))); do
  state=$(sinfo -h -N -n "$node" -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  kill -0 "$slurmd_pid" 2>/dev/null ||
    { print_log_tail "$tmp/log/slurmd.out" "$tmp/log/slurmd.log"; die "slurmd exited at start"; }
  [ "$i" -eq $((up_timeout * 2)) ] && { print_log_tail "$tmp/log/slurmd.out" "$tmp/log/slurmd.log" "$tmp/log/slurmctld.log"
    die "node $node did not become idle within ${up_timeout}s (state: '${state:-unknown}')"; }
  sleep 0.5
done
say "single-node cluster up: node $node, slurmctld 127.0.0.1:$ctld_port, slurmd 127.0.0.1:$slurmd_port"

# --- The runs. --------------------------------------------------------------------------------
# The ranks rendezvous through $TMPDIR/c10dtest-<uid>/, here inside the private temp dir. The
# variables of an outer launch or Slurm allocation are dropped so that only this cluster's are seen.
export TMPDIR=$tmp/tmp
while IFS= read -r var; do
  [ "$var" = SLURM_CONF ] || unset "$var"
done < <(compgen -e | grep -E '^(SLURM_|SBATCH_|SRUN_|SALLOC_)')
unset OMPI_COMM_WORLD_RANK PMI_RANK RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR MASTER_PORT \
      C10DTEST_WORLD_SIZE
summary=()
run_srun() {  # run_srun LOG NTASKS BINARY ARGS...; sets $rc
  local log=$1 n=$2
  shift 2
  rc=0
  local started=$SECONDS
  # In the background and waited for, so that a signal to this script is acted on at once.
  timeout -k 10 "$srun_timeout" srun --ntasks="$n" --nodes=1 --mpi=none --chdir="$tmp/run" \
    --job-name=c10dtest ${SRUN_EXTRA:-} "$@" --gtest_color=no </dev/null >"$log" 2>&1 &
  srun_pid=$!
  wait "$srun_pid" || rc=$?
  srun_pid=
  # 124 or 137 from timeout only when the time ran out: srun itself gives 137 for a task that
  # SIGKILL ended.
  { [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ]; } || [ $((SECONDS - started)) -lt "$srun_timeout" ] && return 0
  tail -n 60 "$log" >&2
  die "srun -n $n $(basename "$1") ran past ${srun_timeout}s"
}
fail_run() {  # fail_run LOG MESSAGE
  tail -n 60 "$1" >&2
  print_log_tail "$tmp/log/slurmd.log"
  die "$2"
}

for n in 2 4; do
  for name in collectives_example verify_state_dict_example; do
    log=$tmp/log/$name-$n.out
    run_srun "$log" "$n" "$tmp/bin/$name"
    [ "$rc" -eq 0 ] || fail_run "$log" "srun -n $n $name exited with $rc"
    grep -qxF "Note: c10dtest runs $n ranks (Slurm)." "$log" ||
      fail_run "$log" "srun -n $n $name: no note naming $n ranks under Slurm"
    banner=$(grep -E "^\[==========\] Running [0-9]+ tests? from .*\.$" "$log") ||
      fail_run "$log" "srun -n $n $name: no gtest banner"
    total=$(sed -E 's/^\[==========\] Running ([0-9]+) tests? .*/\1/' <<<"$banner")
    passed=$(grep -E '^\[  PASSED  \] [0-9]+ tests?\.$' "$log" | sed -E 's/[^0-9]*([0-9]+).*/\1/') ||
      fail_run "$log" "srun -n $n $name: no '[  PASSED  ]' summary line"
    skipped=$(grep -E '^\[  SKIPPED \] [0-9]+ tests?, listed below:$' "$log" |
              sed -E 's/[^0-9]*([0-9]+).*/\1/' || true)
    if [ "$((passed + ${skipped:-0}))" -ne "$total" ] || [ "$total" -eq 0 ]; then
      fail_run "$log" "srun -n $n $name: $passed passed + ${skipped:-0} skipped of $total"
    fi
    ! grep -q '^\[  FAILED  \]' "$log" || fail_run "$log" "srun -n $n $name reported a failure"
    summary+=("PASS  srun -n $n $name: $passed/$total tests passed on $n ranks (Slurm)")
  done
done

# A test that fails on rank 2 only: srun must exit non-zero and the output must name rank 2.
log=$tmp/log/child_suite-fail-4.out
run_srun "$log" 4 "$tmp/bin/child_suite" --gtest_filter='Failures.*'
# Every rank exits with 1 ("a test failed on some rank"); srun passes on the highest task code.
[ "$rc" -eq 1 ] || fail_run "$log" "srun -n 4 child_suite (Failures.*) exited with $rc, not 1, although rank 2 fails"
grep -qxF 'Note: c10dtest runs 4 ranks (Slurm).' "$log" ||
  fail_run "$log" "srun -n 4 child_suite: no note naming 4 ranks under Slurm"
grep -qE '^\[rank 2 of 4\] Expected: \(rank\(\)\) != \(2\)' "$log" ||
  fail_run "$log" "srun -n 4 child_suite: the failure does not name rank 2 of 4"
grep -qF 'planted failure' "$log" || fail_run "$log" "srun -n 4 child_suite: the failure message is missing"
grep -qxF 'c10dtest: Failures.OnlyRankTwoFails failed on rank 2 of 4' "$log" ||
  fail_run "$log" "srun -n 4 child_suite: the summary does not name rank 2 of 4"
grep -qF '[       OK ] Failures.NextTestPasses' "$log" ||
  fail_run "$log" "srun -n 4 child_suite: the test after the failure did not pass"
summary+=("PASS  srun -n 4 child_suite --gtest_filter=Failures.*: exit code $rc, failure named on rank 2 of 4")

# gtest flags under srun: filter, shuffle (one seed on every rank), repeat, brief.
log=$tmp/log/child_suite-flags-4.out
run_srun "$log" 4 "$tmp/bin/child_suite" --gtest_filter='Passing.*' --gtest_shuffle \
  --gtest_repeat=2 --gtest_brief=1
[ "$rc" -eq 0 ] || fail_run "$log" "srun -n 4 child_suite with gtest flags exited with $rc"
[ "$(grep -c '^\[  PASSED  \] 3 tests\.$' "$log")" -eq 2 ] ||
  fail_run "$log" "srun -n 4 child_suite --gtest_repeat=2: not two passing iterations of 3 tests"
! grep -q '^\[ RUN      \]' "$log" || fail_run "$log" "srun -n 4 child_suite: --gtest_brief ignored"
summary+=("PASS  srun -n 4 child_suite --gtest_shuffle --gtest_repeat=2 --gtest_brief=1")

# A rank that dies under srun: the run ends at once, the exit code is not 0, rank 2 is named in
# the output and in the XML report, which holds the test that passed before the death. The exit
# codes are recorded in the summary (docs/reliability.md lists them): c10dtest makes every task it
# can exit with 4; for a task killed by a signal it cannot catch, the code is Slurm's choice.
# A stopped task never exits by itself: without --kill-on-bad-exit=1 (as c10dtest_add_test
# passes it) srun waits for it after the others have exited, until something kills it.
for fault in SEGV ABRT TERM KILL STOP EXIT7; do
  log=$tmp/log/child_suite-dies-$fault.out
  xml=$tmp/run/dies-$fault.xml
  extra=
  [ "$fault" != STOP ] || extra=--kill-on-bad-exit=1
  SRUN_EXTRA=$extra C10DTEST_CHILD_VICTIM=2:$fault run_srun "$log" 4 "$tmp/bin/child_suite" \
    --gtest_filter='Dies.*' --c10dtest_timeout=120 --gtest_output="xml:$xml"
  [ "$rc" -ne 0 ] || fail_run "$log" "srun -n 4 child_suite: rank 2 got $fault and the run passed"
  grep -qF 'rank 2 of 4' "$log" ||
    fail_run "$log" "srun -n 4 child_suite: $fault of rank 2 does not name rank 2 of 4"
  if grep -E '^\[  DEAD    \] rank [013] of 4' "$log"; then
    fail_run "$log" "srun -n 4 child_suite: $fault of rank 2 blamed another rank"
  fi
  ! grep -qF 'ran after a rank died' "$log" ||
    fail_run "$log" "srun -n 4 child_suite: a test ran after rank 2 died"
  [ -s "$xml" ] || fail_run "$log" "srun -n 4 child_suite: no XML report after $fault of rank 2"
  python3 - "$xml" <<'PY' || fail_run "$log" "srun -n 4 child_suite: the XML after $fault of rank 2 is wrong"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
cases = {c.get("name"): c for c in root.iter("testcase")}
assert "FirstPasses" in cases and cases["FirstPasses"].find("failure") is None, "FirstPasses missing or failed"
victim = cases.get("VictimDies")
assert victim is not None and victim.find("failure") is not None, "VictimDies missing or not failed"
assert "rank 2 of 4" in victim.find("failure").get("message"), "VictimDies does not name rank 2 of 4"
assert "NeverRuns" not in cases, "NeverRuns is in the report"
PY
  summary+=("PASS  srun -n 4 child_suite, $fault on rank 2: exit code $rc, rank 2 named in the output and the XML")
done

# c10dtest_add_test(... LAUNCHER srun): the consumer project of test/package, built against this
# build's install, registers srun entries at 2 and 4 ranks; CTest runs them in this cluster.
consumer=$tmp/consumer
cmake --install "$build" --prefix "$consumer/prefix" >"$tmp/log/install.out" 2>&1 ||
  fail_run "$tmp/log/install.out" "cmake --install $build failed"
cmake -S test/package/consumer -B "$consumer/build" -DCMAKE_PREFIX_PATH="$consumer/prefix" \
  -DC10DTEST_CONSUMER_SRUN=ON "-DC10DTEST_SRUN_FLAGS=--mpi=none" >"$tmp/log/consumer.out" 2>&1 &&
  cmake --build "$consumer/build" -j "$(nproc)" >>"$tmp/log/consumer.out" 2>&1 ||
  fail_run "$tmp/log/consumer.out" "the consumer project (LAUNCHER srun) did not build"
log=$tmp/log/consumer-ctest.out
timeout -k 10 "$srun_timeout" ctest --test-dir "$consumer/build" --output-on-failure \
  >"$log" 2>&1 </dev/null || fail_run "$log" "ctest of the srun entries failed"
grep -q '^100% tests passed, 0 tests failed out of 2$' "$log" &&
  grep -q 'consumer_test.srun.np2 .* Passed' "$log" && grep -q 'consumer_test.srun.np4 .* Passed' "$log" ||
  fail_run "$log" "ctest did not pass consumer_test.srun.np2 and .np4"
summary+=("PASS  c10dtest_add_test(LAUNCHER srun): ctest ran consumer_test.srun.np2 and .np4")

echo
say "summary"
printf '  %s\n' "${summary[@]}"
say "all Slurm checks passed"
