#!/usr/bin/env bash
# Runs c10dtest suites under mpirun with 4 ranks split over two "hosts" made of network
# namespaces joined by a veth pair, then cuts that link in the middle of a test.
#
#   1. probe:     a plain command under the same mpirun setup shows ranks 0-1 in the first
#                 namespace and ranks 2-3 in the second.
#   2. no-master: without MASTER_ADDR/MASTER_PORT c10dtest must see that the launch spans hosts
#                 (both namespaces share one hostname and one /tmp) and stop with exit code 2.
#   3. pass:      collectives_example passes over the link (rendezvous on MASTER_ADDR:MASTER_PORT;
#                 Gloo on each host's address towards MASTER_ADDR, found by c10dtest itself: no
#                 GLOO_SOCKET_IFNAME, and the shared hostname resolves to loopback).
#   4. cut:       child_suite's Hang.RankTwoSleepsForever runs with short c10dtest timeouts; a few
#                 seconds into the test the link goes down. Rank 0 must name a dead rank, and the
#                 ranks beyond the cut must report the lost control plane and end, all within
#                 $C10DTEST_MH_BOUND seconds of the cut, with the kernel's own TCP settings.
#
# A silently dropped link leaves a TCP call waiting for as long as the kernel retries
# (tcp_retries2=15: about 15 minutes). c10dtest's ranks do not wait for that: rank 0 sees the
# far ranks' heartbeats stop, and the far ranks see their store calls go unanswered for longer
# than the heartbeat timeout. mpirun itself (talking to its daemon beyond the cut) does wait:
# once every rank has ended, the script gives it 10 s, then ends it and says so. With
# C10DTEST_MH_TCP_RETRIES2=N the namespaces use tcp_retries2=N (nothing outside them changes),
# and mpirun must then end on its own too.
#
# Usage: sudo scripts/test-multihost.sh [BUILD_DIR]     (default: ${C10DTEST_BUILD_DIR:-build})
# Needs root (ip netns), iproute2 and OpenMPI's mpirun. The test binaries are copied to a
# temporary directory first. Environment:
#   C10DTEST_MH_BOUND=90        seconds allowed from the cut to the end of the run
#   C10DTEST_MH_TCP_RETRIES2=kernel  tcp_retries2 inside the namespaces (a number lowers it)
# Everything it creates (namespaces, veth, temporary files, processes inside the namespaces) is
# removed on every exit path. Exit code 0 when every check passed, 1 otherwise.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
if [[ ${1:-} == -h || ${1:-} == --help ]]; then usage; exit 0; fi
if (($# > 1)); then usage >&2; exit 2; fi

root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-${C10DTEST_BUILD_DIR:-$root/build}}
bound=${C10DTEST_MH_BOUND:-90}
retries2=${C10DTEST_MH_TCP_RETRIES2:-kernel}

die() { echo "test-multihost: $*" >&2; exit 1; }
((EUID == 0)) || die "needs root (ip netns, veth)"
# iproute2 (ip, ss) and Open MPI, installed only when missing.
"$root/scripts/install-deps.sh" iproute2 openmpi-bin
for c in ip mpirun timeout ss grep sed; do
  command -v "$c" >/dev/null || die "'$c' not found"
done
for b in examples/collectives_example test/child_suite; do
  [[ -x $build/$b ]] || die "$build/$b not found; build it first (scripts/build.sh)"
done

# The "remote" ranks are local processes that inherit this environment: keep launcher settings
# of the caller out of them.
unset MASTER_ADDR MASTER_PORT GLOO_SOCKET_IFNAME RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE
while read -r v; do unset "$v"; done < <(compgen -e | grep '^C10DTEST_' || true)

ns1=c10dtest-mh$$-1
ns2=c10dtest-mh$$-2
ifname=c10dmh0
tmp=
created=()
checks=()
failed=0

kill_ns_procs() {  # ends every process inside our namespaces (mpirun, orted, ranks, agents)
  local sig pids ns
  for sig in TERM TERM TERM KILL; do
    pids=()
    for ns in "${created[@]}"; do
      # shellcheck disable=SC2207
      pids+=($(ip netns pids "$ns" 2>/dev/null || true))
    done
    ((${#pids[@]})) || return 0
    kill -s "$sig" "${pids[@]}" 2>/dev/null || true
    sleep 1
  done
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  kill_ns_procs
  for ns in "${created[@]}"; do ip netns del "$ns" 2>/dev/null; done  # takes the veth along
  [[ -n $tmp ]] && rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
check() {  # check NAME STATUS [DETAIL]: STATUS 0 passes
  if (($2 == 0)); then checks+=("ok    $1${3:+ ($3)}"); else checks+=("FAIL  $1${3:+ ($3)}"); failed=1; fi
}
show() { sed 's/^/    | /' "$1"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/c10dtest-mh.XXXXXX")
[[ $tmp != *[[:space:]]* ]] || die "the temporary directory '$tmp' contains blanks"
mkdir -p "$tmp/bin" "$tmp/logs" "$tmp/host-$ns1" "$tmp/host-$ns2"
cp "$build/examples/collectives_example" "$build/test/child_suite" "$tmp/bin/"

# A private /24 that no route on this machine covers (besides the default route).
subnet=
for _ in $(seq 50); do
  cand="10.$((200 + RANDOM % 50)).$((RANDOM % 256))"
  if [[ -z $(ip -4 route show table all match "$cand.1" 2>/dev/null | grep -v '^default' || true) ]] &&
    ! ip -4 -o addr show | grep -q " inet $cand\."; then
    subnet=$cand
    break
  fi
done
[[ -n $subnet ]] || die "found no unused 10.x.y.0/24"
addr1=$subnet.1
addr2=$subnet.2
cidr=$subnet.0/24

ip netns add "$ns1" && created+=("$ns1")
ip netns add "$ns2" && created+=("$ns2")
# The veth ends are created inside the namespaces, with the same name in both.
ip link add "$ifname" netns "$ns1" type veth peer name "$ifname" netns "$ns2"
ip -n "$ns1" addr add "$addr1/24" dev "$ifname"
ip -n "$ns2" addr add "$addr2/24" dev "$ifname"
for ns in "$ns1" "$ns2"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "$ifname" up
  if [[ $retries2 != kernel ]]; then
    ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_retries2="$retries2"
  fi
done

# OpenMPI's rsh launcher runs "AGENT HOST COMMAND...": here HOST is a namespace name and each
# "host" gets its own TMPDIR (as separate machines would have their own /tmp).
agent=$tmp/rsh-agent
cat >"$agent" <<EOF
#!/bin/sh
host=\$1
shift
case \$host in
  $ns1 | $ns2) ;;
  *) echo "rsh-agent: unknown host '\$host'" >&2; exit 1 ;;
esac
exec ip netns exec "\$host" env TMPDIR="$tmp/host-\$host" /bin/sh -c "\$*"
EOF
chmod +x "$agent"

# A port in the dynamic range above the kernel's own ephemeral range where possible, so no
# outgoing connection in the namespace can hold it; checked free in the first namespace.
free_port() {
  local lo hi p
  read -r _ hi </proc/sys/net/ipv4/ip_local_port_range
  lo=$((hi < 65000 ? hi + 1 : 49152))
  for _ in $(seq 50); do
    p=$((lo + RANDOM % (65536 - lo)))
    if [[ -z $(ip netns exec "$ns1" ss -Htln "sport = :$p") ]]; then echo "$p"; return; fi
  done
  die "found no free port"
}

mpi=(mpirun --host "$ns1:2,$ns2:2" -np 4
  --mca plm_rsh_agent "$agent" --mca plm_rsh_no_tree_spawn 1
  --mca oob_tcp_if_include "$cidr" --mca btl_tcp_if_include "$cidr"
  --bind-to none)
((EUID != 0)) || mpi+=(--allow-run-as-root)

# run_mpi OUT BACKSTOP ARGS...: mpirun inside the first namespace, in the background; sets $pid.
run_mpi() {
  local out=$1 backstop=$2
  shift 2
  TMPDIR="$tmp/host-$ns1" ip netns exec "$ns1" timeout -k 5 "$backstop" "${mpi[@]}" "$@" \
    >"$out" 2>&1 &
  pid=$!
}
wait_rc() { rc=0; wait "$pid" || rc=$?; }  # sets $rc
suite_ranks() {  # suite_ranks NS...: child_suite processes running in those namespaces
  local n=0 p ns
  for ns in "$@"; do
    for p in $(ip netns pids "$ns"); do
      [[ $(cat "/proc/$p/comm" 2>/dev/null) == child_suite ]] && n=$((n + 1))
    done
  done
  echo "$n"
}
mpirun_killed=0
veth_bytes() {  # bytes through the second namespace's end of the veth
  local d=/sys/class/net/$ifname/statistics
  ip netns exec "$ns2" sh -c "echo \$((\$(cat $d/rx_bytes) + \$(cat $d/tx_bytes)))"
}

echo "test-multihost: namespaces $ns1 ($addr1) and $ns2 ($addr2) on $ifname, subnet $cidr"
echo "test-multihost: tcp_retries2 in the namespaces: $retries2; bound after the cut: ${bound}s"

# 1. probe
echo "== probe: where do the ranks run?"
t0=$(now_ms)
# shellcheck disable=SC2016
run_mpi "$tmp/probe.out" 60 sh -c 'echo "rank $OMPI_COMM_WORLD_RANK in $(ip netns identify)"'
wait_rc
show "$tmp/probe.out"
want=$(printf 'rank 0 in %s\nrank 1 in %s\nrank 2 in %s\nrank 3 in %s' "$ns1" "$ns1" "$ns2" "$ns2")
got=$(grep '^rank ' "$tmp/probe.out" | sort || true)
[[ $rc == 0 && $got == "$want" ]] && ok=0 || ok=1
check "probe: ranks 0,1 in $ns1 and 2,3 in $ns2" "$ok" "rc $rc, $(secs $(($(now_ms) - t0)))s"

# 2. no MASTER_ADDR/MASTER_PORT
echo "== no-master: child_suite without MASTER_ADDR/MASTER_PORT"
t0=$(now_ms)
run_mpi "$tmp/nomaster.out" 120 -x GLOO_SOCKET_IFNAME="$ifname" "$tmp/bin/child_suite" \
  --gtest_filter=Passing.A --c10dtest_rendezvous_timeout=20 --c10dtest_timeout=30
wait_rc
show "$tmp/nomaster.out"
[[ $rc == 2 ]] && grep -q 'launch spans several hosts; set MASTER_ADDR and MASTER_PORT' \
  "$tmp/nomaster.out" && ok=0 || ok=1
check "no-master: multi-host detected, exit 2" "$ok" "rc $rc, $(secs $(($(now_ms) - t0)))s"

# 3. passing suite over the link
port=$(free_port)
echo "== pass: collectives_example, MASTER_ADDR=$addr1 MASTER_PORT=$port"
before=$(veth_bytes)
t0=$(now_ms)
run_mpi "$tmp/pass.out" 180 -x MASTER_ADDR="$addr1" -x MASTER_PORT="$port" \
  "$tmp/bin/collectives_example" \
  --c10dtest_timeout=60 --c10dtest_rendezvous_timeout=30
wait_rc
pass_ms=$(($(now_ms) - t0))
after=$(veth_bytes)
show "$tmp/pass.out"
[[ $rc == 0 ]] && grep -q '^\[  PASSED  \]' "$tmp/pass.out" &&
  grep -qxF 'Note: c10dtest runs 4 ranks (OpenMPI).' "$tmp/pass.out" && ! grep -q '^\[  FAILED  \]' "$tmp/pass.out" &&
  ok=0 || ok=1
check "pass: collectives_example passed on 4 ranks over 2 hosts" "$ok" "rc $rc, $(secs "$pass_ms")s"
(((after - before) > 20000)) && ok=0 || ok=1
check "pass: traffic crossed the veth" "$ok" "$((after - before)) bytes"

# 4. cut the link in the middle of a test
port=$(free_port)
test=Hang.RankTwoSleepsForever
echo "== cut: child_suite $test, link down 3 s into the test (MASTER_PORT=$port)"
backstop=$((bound + 60))
t0=$(now_ms)
run_mpi "$tmp/cut.out" "$backstop" -x MASTER_ADDR="$addr1" -x MASTER_PORT="$port" \
  -x GLOO_SOCKET_IFNAME="$ifname" "$tmp/bin/child_suite" --gtest_filter="$test" \
  --c10dtest_timeout=60 --c10dtest_collective_timeout=20 --c10dtest_heartbeat_timeout=5 \
  --c10dtest_rendezvous_timeout=30 --c10dtest_log_dir="$tmp/logs"
deadline=$((t0 + 60000))
until grep -q "^\[ RUN      \] $test" "$tmp/cut.out" 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null || (($(now_ms) > deadline)); then break; fi
  sleep 0.2
done
cut_ms=
dead_ms=
store_conns=0
if grep -q "^\[ RUN      \] $test" "$tmp/cut.out"; then
  sleep 3
  # The far ranks' control-plane connections go to MASTER_ADDR:MASTER_PORT across the veth.
  store_conns=$(ip netns exec "$ns2" ss -Htn state established "dst $addr1:$port" | grep -c . || true)
  ip -n "$ns2" link set "$ifname" down
  cut_ms=$(now_ms)
  echo "test-multihost: link down at +$(secs $((cut_ms - t0)))s"
  ranks_gone_ms=
  while kill -0 "$pid" 2>/dev/null; do
    if [[ -z $dead_ms ]] && grep -q '^\[  DEAD    \]' "$tmp/cut.out"; then dead_ms=$(now_ms); fi
    if [[ -z $ranks_gone_ms ]] && (($(suite_ranks "$ns1" "$ns2") == 0)); then
      ranks_gone_ms=$(now_ms)
    fi
    # Every rank has ended: mpirun gets 10 s to notice, then is ended (see the header).
    if [[ -n $ranks_gone_ms ]] && (($(now_ms) > ranks_gone_ms + 10000)); then
      mpirun_killed=1
      for p in $(ip netns pids "$ns1"); do kill -KILL "$p" 2>/dev/null || true; done
      break
    fi
    sleep 0.2
  done
fi
wait_rc
end_ms=$(now_ms)
# The ranks beyond the cut cannot be reached by mpirun: wait (bounded) for them to end on
# their own, then read their messages from the log directory.
far_end_ms=
if [[ -n $cut_ms ]]; then
  while :; do
    (($(suite_ranks "$ns2") == 0)) && { far_end_ms=$(now_ms); break; }
    (($(now_ms) > cut_ms + bound * 1000)) && break
    sleep 0.2
  done
fi
show "$tmp/cut.out"
for f in "$tmp"/logs/rank-*.log; do
  [[ -s $f ]] || continue
  echo "    -- ${f##*/}"
  show "$f"
done
if [[ -z $cut_ms ]]; then
  check "cut: the test started before the link was cut" 1 "rc $rc"
else
  ((store_conns >= 2)) && ok=0 || ok=1
  check "cut: ranks in $ns2 held connections to the store at $addr1:$port" "$ok" "$store_conns before the cut"
  after_cut=$((end_ms - cut_ms))
  if [[ -n $ranks_gone_ms ]]; then
    ((ranks_gone_ms - cut_ms <= bound * 1000)) && ok=0 || ok=1
    check "cut: every rank ended within ${bound}s of the cut" "$ok" \
      "$(secs $((ranks_gone_ms - cut_ms)))s after the cut"
  elif ((rc != 0)); then
    check "cut: every rank ended within ${bound}s of the cut" 0 "with mpirun"
  else
    check "cut: every rank ended within ${bound}s of the cut" 1 "mpirun rc $rc"
  fi
  if ((mpirun_killed)) && [[ $retries2 == kernel ]]; then
    checks+=("note  mpirun still waited for its daemon beyond the cut 10 s after every rank had ended (OpenMPI's own TCP wait); ended by this script")
  else
    [[ $rc != 0 && $rc != 124 && $rc != 137 ]] && ((mpirun_killed == 0)) &&
      ((after_cut <= bound * 1000)) && ok=0 || ok=1
    check "cut: mpirun ended non-zero on its own within ${bound}s of the cut" "$ok" \
      "rc $rc, $(secs "$after_cut")s after the cut"
  fi
  dead=$(grep -m1 -E '^\[  DEAD    \] rank [0-9]+ of 4 stopped responding' "$tmp/cut.out" || true)
  [[ $dead =~ rank\ [23]\ of ]] && grep -q 'c10dtest: ending all ranks (exit code 4)' "$tmp/cut.out" &&
    ok=0 || ok=1
  check "cut: rank 0 named a rank beyond the cut as dead" "$ok" \
    "${dead:-no [  DEAD    ] line}${dead_ms:+, seen $(secs $((dead_ms - cut_ms)))s after the cut}"
  grep -q '^\[  TIMEOUT \]' "$tmp/cut.out" && ok=1 || ok=0
  check "cut: ended by the lost link, not by the test timeout" "$ok"
  lost=$(cat "$tmp"/logs/rank-2.log "$tmp"/logs/rank-3.log 2>/dev/null |
    grep -c 'lost the control plane served by rank 0' || true)
  [[ -n $far_end_ms ]] && ((lost == 2)) && ok=0 || ok=1
  # The log files were last written with those messages, just before the ranks ended.
  last_log_ms=0
  for f in "$tmp"/logs/rank-2.log "$tmp"/logs/rank-3.log; do
    [[ -s $f ]] || continue
    m=$(stat -c %.3Y "$f")
    m=${m//[.,]/}
    ((m > last_log_ms)) && last_log_ms=$m
  done
  if [[ -z $far_end_ms ]]; then
    detail="still running ${bound}s after the cut"
  elif ((lost == 2)); then
    detail="last message $(secs $((last_log_ms - cut_ms)))s after the cut"
  else
    detail="gone $(secs $((far_end_ms - cut_ms)))s after the cut"
  fi
  check "cut: ranks 2 and 3 reported the lost control plane and ended" "$ok" "$lost messages, $detail"
fi
cut_total_ms=$((end_ms - t0))

echo
echo "== summary (namespaces $ns1/$ns2, subnet $cidr, tcp_retries2 $retries2)"
printf '  %s\n' "${checks[@]}"
echo "  pass case: $(secs "$pass_ms")s; cut case: $(secs "$cut_total_ms")s in all"
if ((failed)); then
  echo "test-multihost: FAILED"
  exit 1
fi
echo "test-multihost: all checks passed"
