#!/usr/bin/env python3
# Seeded fault injection ("chaos") for c10dtest: runs the victim suite test/children/chaos_suite
# again and again, each time under mpirun or self-spawn, and sends one rank a fault (SIGKILL,
# SIGSEGV, SIGABRT, SIGTERM, SIGSTOP, or SIGSTOP and SIGCONT heartbeat + 6 s later: a rank that
# resumes after its peers gave up on it) at a random moment between the rank's start-up (once its
# crash handlers are installed) and the end of the run. Then it checks how the run ended: within
# heartbeat + 35 s of the fault (else a hang: everything is killed), not with exit code 0, the
# victim named ("rank V of N") and no other rank blamed as dead or stuck, no process of the run
# left 5 s after its end, and an XML report that holds every test that ended and names the
# victim in the failure of the test the fault broke.
#
#   scripts/chaos.py                      # from the checkout: 20 iterations, seed 1, ./build
#   scripts/chaos.py --iterations 100 --seed 7 --json chaos.json --keep chaos-failures
#   scripts/chaos.py --launchers self --faults KILL,STOP --iterations 10
#
# Needs a build with the chaos_suite target (cmake --build build --target chaos_suite) and, for
# the mpirun launcher, mpirun on PATH (it is left out, with a note, when missing). The same seed
# draws the same launcher, victim rank, fault and delay for each iteration. Prints one line per
# iteration, a summary per fault type and per launcher, and "N passed, M failed"; exits 0 only
# when every judged iteration passed every check (an iteration whose fault came too late, after
# the run's end or its final summary, is counted as missed and not judged; one whose victim could
# not be found and readied within 30 s counts as failed).
# Python 3 standard library only; Linux only (it reads /proc).

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

TAG_VAR = "C10DTEST_CHAOS_TAG"
FAULTS = {
    "KILL": signal.SIGKILL,
    "SEGV": signal.SIGSEGV,
    "ABRT": signal.SIGABRT,
    "TERM": signal.SIGTERM,
    "STOP": signal.SIGSTOP,
    "STOPCONT": signal.SIGSTOP,  # then SIGCONT after heartbeat + STOPCONT_AFTER s
}
LAUNCHERS = ("mpirun", "self")
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
}
SEGV_BIT = 1 << (signal.SIGSEGV - 1)
# c10dtest's stack-request signal (SIGRTMIN + 4, src/gtest/signals.cpp), installed with its crash
# handlers: a caught SIGSEGV alone does not say c10dtest is ready, since some libraries install
# one while they load, before main (seen with Debian trixie's LibTorch 2.6).
STACK_BIT = 1 << (signal.SIGRTMIN + 4 - 1)

SETUP_LIMIT = 30.0   # seconds for the victim to appear and install its crash handlers
RUN_LIMIT = 120.0    # seconds for a whole run
END_SLACK = 5 + 30   # the run must end within heartbeat + this after the fault
STOP_SLACK = 5       # ... and a stopped rank's run within heartbeat + this (else "slow_stop")
# SIGCONT comes after every rank has given up on the stopped one (rank 0 names a silent rank
# after the heartbeat timeout, the others give up on rank 0's store about 1.5 s later): a shorter stop
# is a pause the run may ride out, not a fault.
STOPCONT_AFTER = 6
ORPHAN_WAIT = 5.0    # seconds after the run's end before a tagged process is an orphan
POLL = 0.01

SUMMARY_RE = re.compile(r"^\[==========\] .* ran\b")  # the closing summary, not "Running ..."
RUN_RE = re.compile(r"\[ RUN      \] Chaos\.(\w+)")
OK_RE = re.compile(r"\[       OK \] Chaos\.(\w+) \(")
FAILED_RE = re.compile(r"^\[  FAILED  \] Chaos\.(\w+) \(", re.M)
DEAD_RE = re.compile(r"\[  DEAD    \] rank (\d+) of")
TIMEOUT_RE = re.compile(r"\[  TIMEOUT \] .* on ranks? ([0-9, ]+) of")


class Interrupted(Exception):
    pass


def on_terminate(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


# ---------------------------------------------------------------------------------------------
# /proc helpers

def proc_environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def proc_status(pid):
    """The fields of /proc/PID/status, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def is_alive(pid):
    st = proc_status(pid)
    return st is not None and not st.get("State", "").startswith(("Z", "X"))


def proc_exe(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def tagged_processes(tag):
    """{pid: environ} of the live processes that carry C10DTEST_CHAOS_TAG=tag."""
    found = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        env = proc_environ(entry)
        if env is None or env.get(TAG_VAR) != tag:
            continue
        if is_alive(int(entry)):
            found[int(entry)] = env
    return found


def session_members(sid):
    """Live processes whose session id is `sid` (the run was started in a session of its own)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def find_victim(tag, launcher, rank, binary):
    rank_var = "OMPI_COMM_WORLD_RANK" if launcher == "mpirun" else "C10DTEST_SPAWN_RANK"
    pids = []
    for pid, env in tagged_processes(tag).items():
        if env.get(rank_var) != str(rank):
            continue
        # A rank's children (a shell running addr2line for a stack) inherit its environment.
        exe = proc_exe(pid)
        if exe is not None and os.path.realpath(exe) != binary:
            continue
        pids.append(pid)
    # The rank itself, not a helper it forked from the same binary.
    roots = [p for p in pids if parent_of(p) not in pids]
    return min(roots or pids) if pids else None


def parent_of(pid):
    st = proc_status(pid) or {}
    try:
        return int(st.get("PPid", "0"))
    except ValueError:
        return 0


def handlers_installed(pid):
    st = proc_status(pid)
    if st is None:
        return None
    try:
        caught = int(st.get("SigCgt", "0"), 16)
        return bool(caught & SEGV_BIT) and bool(caught & STACK_BIT)
    except ValueError:
        return False


def send(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# ---------------------------------------------------------------------------------------------
# The run's output, read continuously so the pipe never fills.

class Output:
    def __init__(self, stream):
        self.lines = []  # (monotonic time of arrival, text)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self.lock:
                    self.lines.append((time.monotonic(), line))
        except (OSError, ValueError):
            pass

    def snapshot(self):
        with self.lock:
            return list(self.lines)

    def summary_time(self):
        for t, line in self.snapshot():
            if SUMMARY_RE.search(line):
                return t
        return None

    def text(self):
        return "\n".join(line for _, line in self.snapshot())


# ---------------------------------------------------------------------------------------------
# One iteration

def kill_everything(tag, proc):
    """SIGKILL the run's session and every tagged process (SIGCONT first: a stopped one)."""
    victims = set(tagged_processes(tag))
    if proc is not None:
        victims.update(session_members(proc.pid))
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for pid in victims:
        send(pid, signal.SIGCONT)
        send(pid, signal.SIGKILL)
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def binary_mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def command_for(launcher, binary, ranks, xml_path, heartbeat, mpirun):
    flags = ["--gtest_color=no", f"--gtest_output=xml:{xml_path}",
             f"--c10dtest_heartbeat_timeout={heartbeat:g}", "--c10dtest_timeout=60"]
    if launcher == "mpirun":
        return [mpirun, "-x", TAG_VAR, "-n", str(ranks), binary] + flags
    return [binary, f"--c10dtest_world_size={ranks}"] + flags


def run_environment(launcher, tag):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("C10DTEST_", "OMPI_COMM_WORLD_", "PMIX_"))}
    env[TAG_VAR] = tag
    if launcher == "mpirun":
        env.update(MPI_ENV)
    return env


def run_iteration(index, cfg, launcher, victim, fault, delay):
    rec = {
        "index": index, "launcher": launcher, "fault": fault, "victim": victim,
        "delay": round(delay, 3), "verdict": None, "failed_checks": [], "exit_code": None,
        "fault_to_end": None, "victim_pid": None, "ready_after": None, "fault_at": None,
        "missed_reason": None, "setup_error": None, "hang": False, "orphans": [],
        "blame": [], "xml_problems": [], "victim_named": None, "in_progress": None,
        "tests_ended": 0,
    }
    tag = f"{os.getpid()}-{index}-{random.SystemRandom().getrandbits(32):08x}"
    rec["tag"] = tag
    rec["binary_mtime"] = binary_mtime(cfg.binary)
    tmp = tempfile.mkdtemp(prefix="c10dtest-chaos-")
    xml_path = os.path.join(tmp, "report.xml")
    cmd = command_for(launcher, cfg.binary, cfg.ranks, xml_path, cfg.heartbeat, cfg.mpirun)
    rec["command"] = " ".join(cmd)
    proc = None
    out = None
    try:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=run_environment(launcher, tag),
                                    cwd=tmp, start_new_session=True)
        except OSError as e:  # e.g. the binary is being relinked
            rec["setup_error"] = f"cannot start the run: {e}"
            rec["verdict"] = "setup"
            return finish(rec, cfg, None, tmp, xml_path)
        out = Output(proc.stdout)
        deadline = start + RUN_LIMIT

        # 1. The victim, once it has installed its crash handlers.
        pid = None
        setup_until = start + SETUP_LIMIT
        while time.monotonic() < setup_until:
            if pid is None:
                pid = find_victim(tag, launcher, victim, cfg.binary)
            if pid is not None:
                ready = handlers_installed(pid)
                if ready:
                    break
                if ready is None:  # gone before it was ready: look again (a re-exec, a race)
                    pid = None
            if proc.poll() is not None:
                break
            time.sleep(POLL)
        rec["victim_pid"] = pid
        ready_at = time.monotonic()
        if pid is None or not handlers_installed(pid):
            code = proc.poll()
            if code is not None:
                why = f"the run ended (exit code {code}) before rank {victim} was ready"
            elif pid is None:
                why = f"rank {victim} not found within {SETUP_LIMIT:g} s"
            else:
                why = (f"rank {victim} (pid {pid}) did not install its crash handlers within "
                       f"{SETUP_LIMIT:g} s")
            rec["setup_error"] = why
            rec["verdict"] = "setup"
            kill_everything(tag, proc)
            rec["exit_code"] = proc.poll()
            return finish(rec, cfg, out, tmp, xml_path)
        rec["ready_after"] = round(ready_at - start, 3)

        # 2. The fault, `delay` seconds later.
        time.sleep(max(0.0, ready_at + delay - time.monotonic()))
        fault_at = time.monotonic()
        cont_at = None
        if out.summary_time() is not None:
            rec["missed_reason"] = "the run had printed its final summary"
        elif not is_alive(pid):
            rec["missed_reason"] = "the victim had already exited"
        elif not send(pid, FAULTS[fault]):
            rec["missed_reason"] = "the victim had already exited (no such process)"
        else:
            rec["fault_at"] = round(fault_at - start, 3)
            if fault == "STOPCONT":
                cont_at = fault_at + cfg.heartbeat + STOPCONT_AFTER
        if rec["missed_reason"] is not None:
            rec["verdict"] = "missed"
        else:
            deadline = min(deadline, fault_at + cfg.heartbeat + END_SLACK)

        # 3. The end of the run, within its bound.
        while proc.poll() is None and time.monotonic() < deadline:
            if cont_at is not None and time.monotonic() >= cont_at:
                send(pid, signal.SIGCONT)
                rec["cont_at"] = round(time.monotonic() - start, 3)
                cont_at = None
            time.sleep(POLL)
        end = time.monotonic()
        if proc.poll() is None:
            rec["hang"] = True
            kill_everything(tag, proc)
        rec["exit_code"] = proc.poll()
        if rec["missed_reason"] is None:
            rec["fault_to_end"] = round(end - fault_at, 3)
            # A summary that arrived before the fault was sent: the fault came too late.
            summary = out.summary_time()
            if summary is not None and summary < fault_at:
                rec["missed_reason"] = "the run had printed its final summary"
                rec["verdict"] = "missed"

        # 4. Orphans: tagged processes still there some time after the run's main process ended
        # (for STOPCONT, after the victim was resumed, so that it has the chance to leave).
        if not rec["hang"]:
            orphan_at = max(end, cont_at if cont_at is not None else end) + ORPHAN_WAIT
            while time.monotonic() < orphan_at:
                if cont_at is not None and time.monotonic() >= cont_at:
                    send(pid, signal.SIGCONT)
                    rec["cont_at"] = round(time.monotonic() - start, 3)
                    cont_at = None
                if not tagged_processes(tag):
                    break
                time.sleep(0.1)
            else:
                for opid, env in sorted(tagged_processes(tag).items()):
                    st = proc_status(opid) or {}
                    rank = env.get("OMPI_COMM_WORLD_RANK", env.get("C10DTEST_SPAWN_RANK", "-"))
                    rec["orphans"].append({"pid": opid, "rank": rank,
                                           "state": st.get("State", "?"),
                                           "cmdline": proc_cmdline(opid)[:200]})
        kill_everything(tag, proc)
        if out is not None:
            out.thread.join(timeout=5)
        return finish(rec, cfg, out, tmp, xml_path)
    finally:
        if proc is not None and (proc.poll() is None or tagged_processes(tag)):
            kill_everything(tag, proc)
        # Closing the pipe while the reader still waits on it would block on the reader's lock;
        # a reader still waiting (a writer outside the run's session) is a daemon thread.
        if proc is not None and proc.stdout is not None and (out is None or
                                                             not out.thread.is_alive()):
            try:
                proc.stdout.close()
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def finish(rec, cfg, out, tmp, xml_path):
    """Judges the iteration (unless it was missed or could not be set up) and keeps its files."""
    text = out.text() if out is not None else ""
    if rec["verdict"] is None:
        judge(rec, cfg, text, xml_path)
    # No fault sent, yet the run failed: not judged (the fault came too late), but worth a look.
    rec["failed_alone"] = (rec["verdict"] == "missed" and rec["fault_at"] is None and
                           (rec["hang"] or rec["exit_code"] not in (0, None)))
    if cfg.keep and (rec["verdict"] in ("fail", "setup") or rec["failed_alone"]):
        os.makedirs(cfg.keep, exist_ok=True)
        stem = os.path.join(cfg.keep, f"iter-{rec['index']:03d}-{rec['launcher']}-"
                                      f"{rec['fault']}-rank{rec['victim']}")
        with open(stem + ".log", "w") as f:
            f.write(f"# {rec['command']}\n# {json.dumps(summary_fields(rec))}\n")
            f.write(text + "\n")
        if os.path.exists(xml_path):
            shutil.copyfile(xml_path, stem + ".xml")
        rec["kept"] = stem
    lines = text.splitlines()
    rec["output_tail"] = lines[-40:]
    return rec


def summary_fields(rec):
    return {k: rec[k] for k in ("index", "launcher", "fault", "victim", "delay", "exit_code",
                                "fault_to_end", "verdict", "failed_checks")}


def blamed_ranks(text):
    """Ranks the text names as dead or stuck."""
    named = []
    for line in text.splitlines():
        for m in DEAD_RE.finditer(line):
            named.append(("dead", int(m.group(1)), line.strip()))
        for m in TIMEOUT_RE.finditer(line):
            ranks = [int(r) for r in re.split(r"[, ]+", m.group(1).strip()) if r]
            named.append(("stuck", ranks, line.strip()))
    return named


def wrong_blames(named, victim):
    wrong = []
    for kind, ranks, line in named:
        if kind == "dead" and ranks != victim:
            wrong.append(line)
        if kind == "stuck" and set(ranks) != {victim}:
            wrong.append(line)
    return wrong


def judge(rec, cfg, text, xml_path):
    victim, n = rec["victim"], cfg.ranks
    named_re = re.compile(rf"\brank {victim} of {n}\b")
    failed = []

    if rec["hang"]:
        failed.append("hang")
    elif rec["fault"] in ("STOP", "STOPCONT") and rec.get("fault_to_end") is not None and \
            rec["fault_to_end"] > cfg.heartbeat + STOP_SLACK:
        failed.append("slow_stop")
    if rec["exit_code"] == 0:
        failed.append("false_pass")
    rec["victim_named"] = bool(named_re.search(text))
    if not rec["victim_named"]:
        failed.append("victim_named")

    blame = wrong_blames(blamed_ranks(text), victim)

    # The XML report.
    problems = []
    runs = RUN_RE.findall(text)
    ok = set(OK_RE.findall(text))
    failed_tests = set(FAILED_RE.findall(text))
    ended = ok | failed_tests
    rec["tests_ended"] = len(ended)
    in_progress = next((t for t in reversed(runs) if t not in ended), None)
    rec["in_progress"] = in_progress
    cases = {}
    if not os.path.exists(xml_path):
        problems.append("no XML report")
    else:
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, OSError) as e:
            problems.append(f"XML report does not parse: {e}")
            root = None
        if root is not None:
            for case in root.iter("testcase"):
                if case.get("classname") == "Chaos":
                    cases.setdefault(case.get("name"), case)
            for case in root.iter("testcase"):
                for fail in case.findall("failure"):
                    for kind, ranks, line in blamed_ranks(
                            (fail.get("message") or "") + "\n" + (fail.text or "")):
                        if wrong_blames([(kind, ranks, line)], victim):
                            blame.append(f"XML {case.get('classname')}.{case.get('name')}: "
                                         f"{line}")

            def names_victim(case):
                return any(named_re.search(f.get("message") or "")
                           for f in case.findall("failure"))

            for name in sorted(ended):
                case = cases.get(name)
                if case is None:
                    problems.append(f"Chaos.{name} ended in the output but is not in the XML")
                elif name in ok and name not in failed_tests and case.find("failure") is not None:
                    problems.append(f"Chaos.{name} passed but has a <failure> in the XML")
            if in_progress is not None:
                case = cases.get(in_progress)
                if case is None:
                    problems.append(f"Chaos.{in_progress} (in progress at the fault) is not in "
                                    f"the XML")
                elif not names_victim(case):
                    problems.append(f"Chaos.{in_progress} (in progress at the fault) has no "
                                    f"<failure> naming rank {victim} of {n}")
            elif not runs:
                if not any(names_victim(c) for c in root.iter("testcase")):
                    problems.append(f"no test had started and no <failure> names rank {victim} "
                                    f"of {n}")
    rec["blame"] = blame
    rec["xml_problems"] = problems
    if blame:
        failed.append("wrong_blame")
    if rec["orphans"]:
        failed.append("orphans")
    if problems:
        failed.append("xml")
    rec["failed_checks"] = failed
    rec["verdict"] = "fail" if failed else "pass"


# ---------------------------------------------------------------------------------------------
# Reporting

def iteration_line(rec, total):
    width = len(str(total))
    code = "-" if rec["exit_code"] is None else str(rec["exit_code"])
    end = "-" if rec["fault_to_end"] is None else f"{rec['fault_to_end']:.2f}s"
    verdict = rec["verdict"].upper()
    if rec["verdict"] == "fail":
        verdict += " (" + ", ".join(rec["failed_checks"]) + ")"
    elif rec["verdict"] == "missed":
        verdict += f" ({rec['missed_reason']})"
        if rec.get("failed_alone"):
            verdict += ("; NOTE: the run hung without a fault" if rec["hang"] else
                        f"; NOTE: the run failed without a fault (exit {code})")
    elif rec["verdict"] == "setup":
        verdict += f" ({rec['setup_error']})"
    return (f"[{rec['index'] + 1:>{width}}/{total}] {rec['launcher']:<6} {rec['fault']:<8} "
            f"rank {rec['victim']} delay {rec['delay']:5.2f}s exit {code:>4} "
            f"end {end:>7}  {verdict}")


def table(records, key, title):
    groups = {}
    for rec in records:
        groups.setdefault(rec[key], []).append(rec)
    groups["all"] = list(records)
    head = (f"{title:<9} {'runs':>4} {'missed':>6} {'setup':>5} {'judged':>6} {'passed':>6} "
            f"{'hangs':>5} {'f.pass':>6} {'blame':>5} {'orphan':>6} {'named%':>6} "
            f"{'xml%':>5} {'slow':>4} {'med s':>6} {'max s':>6}")
    rows = [head, "-" * len(head)]
    for name, recs in groups.items():
        judged = [r for r in recs if r["verdict"] in ("pass", "fail")]
        ends = [r["fault_to_end"] for r in judged
                if not r["hang"] and r["fault_to_end"] is not None]

        def pct(check):
            if not judged:
                return "-"
            good = sum(check not in r["failed_checks"] for r in judged)
            return f"{100.0 * good / len(judged):.0f}"

        rows.append(
            f"{name:<9} {len(recs):>4} {sum(r['verdict'] == 'missed' for r in recs):>6} "
            f"{sum(r['verdict'] == 'setup' for r in recs):>5} {len(judged):>6} "
            f"{sum(r['verdict'] == 'pass' for r in recs):>6} "
            f"{sum(r['hang'] for r in judged):>5} "
            f"{sum('false_pass' in r['failed_checks'] for r in judged):>6} "
            f"{sum('wrong_blame' in r['failed_checks'] for r in judged):>5} "
            f"{sum(len(r['orphans']) for r in judged):>6} {pct('victim_named'):>6} "
            f"{pct('xml'):>5} {sum('slow_stop' in r['failed_checks'] for r in judged):>4} "
            f"{(f'{statistics.median(ends):.2f}' if ends else '-'):>6} "
            f"{(f'{max(ends):.2f}' if ends else '-'):>6}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Seeded fault injection into the c10dtest chaos_suite: one rank per run "
                    "is killed, crashed, terminated or frozen at a random moment.")
    p.add_argument("--build", default="build", help="the build directory (default: build)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--heartbeat", type=float, default=3.0,
                   help="seconds, passed as --c10dtest_heartbeat_timeout (default 3)")
    p.add_argument("--window", type=float, default=2.5,
                   help="the fault lands a uniform [0, WINDOW] seconds after the victim has "
                        "installed its crash handlers (default 4)")
    p.add_argument("--launchers", default=",".join(LAUNCHERS),
                   help="comma-separated, of: mpirun, self (default: mpirun,self)")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help="comma-separated, of: " + ", ".join(FAULTS) + " (default: all)")
    p.add_argument("--json", help="write every iteration's record to this file")
    p.add_argument("--keep", help="keep the output and XML report of failing iterations here")
    args = p.parse_args(argv)
    args.launchers = [s.strip() for s in args.launchers.split(",") if s.strip()]
    args.faults = [s.strip().upper() for s in args.faults.split(",") if s.strip()]
    bad = [l for l in args.launchers if l not in LAUNCHERS]
    if bad or not args.launchers:
        p.error(f"--launchers: unknown {bad}; known: {', '.join(LAUNCHERS)}")
    bad = [f for f in args.faults if f not in FAULTS]
    if bad or not args.faults:
        p.error(f"--faults: unknown {bad}; known: {', '.join(FAULTS)}")
    if args.iterations < 0 or args.ranks < 1 or args.heartbeat <= 0 or args.window < 0:
        p.error("--iterations >= 0, --ranks >= 1, --heartbeat > 0 and --window >= 0")
    return args


def main(argv):
    cfg = parse_args(argv)
    binary = os.path.join(cfg.build, "test", "chaos_suite")
    if not os.access(binary, os.X_OK):
        print(f"chaos.py: no {binary}; build it with: cmake --build {cfg.build} "
              f"--target chaos_suite", file=sys.stderr)
        return 2
    cfg.binary = os.path.realpath(binary)
    cfg.mpirun = shutil.which("mpirun")
    if "mpirun" in cfg.launchers and cfg.mpirun is None:
        print("chaos.py: note: no mpirun on PATH; the mpirun launcher is left out")
        cfg.launchers = [l for l in cfg.launchers if l != "mpirun"]
        if not cfg.launchers:
            print("chaos.py: no launcher left", file=sys.stderr)
            return 2

    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGHUP, on_terminate)
    rng = random.Random(cfg.seed)
    records = []
    print(f"chaos: {cfg.iterations} iterations, seed {cfg.seed}, {cfg.ranks} ranks, heartbeat "
          f"{cfg.heartbeat:g} s, window {cfg.window:g} s, launchers {','.join(cfg.launchers)}, "
          f"faults {','.join(cfg.faults)}, binary {cfg.binary}", flush=True)
    interrupted = None
    built_at = binary_mtime(cfg.binary)
    try:
        for i in range(cfg.iterations):
            launcher = rng.choice(cfg.launchers)
            victim = rng.randrange(cfg.ranks)
            fault = rng.choice(cfg.faults)
            delay = rng.uniform(0.0, cfg.window)
            rec = run_iteration(i, cfg, launcher, victim, fault, delay)
            records.append(rec)
            print(iteration_line(rec, cfg.iterations), flush=True)
            if rec["binary_mtime"] != built_at:
                print(f"      note: {cfg.binary} was rebuilt during this campaign; this and "
                      f"later iterations ran another build")
                built_at = rec["binary_mtime"]
            if rec["verdict"] == "fail":
                for line in rec["blame"]:
                    print(f"      wrong blame: {line}")
                for line in rec["xml_problems"]:
                    print(f"      xml: {line}")
                for o in rec["orphans"]:
                    print(f"      orphan: pid {o['pid']} rank {o['rank']} state {o['state']}")
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = str(e) or "interrupted"
        print(f"chaos.py: {interrupted}; stopping after {len(records)} iterations",
              file=sys.stderr)

    print()
    print(table(records, "fault", "fault"))
    print()
    print(table(records, "launcher", "launcher"))
    print()
    passed = sum(r["verdict"] == "pass" for r in records)
    failed = sum(r["verdict"] in ("fail", "setup") for r in records)
    missed = sum(r["verdict"] == "missed" for r in records)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({"seed": cfg.seed, "iterations": cfg.iterations, "ranks": cfg.ranks,
                       "heartbeat": cfg.heartbeat, "window": cfg.window,
                       "launchers": cfg.launchers, "faults": cfg.faults, "binary": cfg.binary,
                       "passed": passed, "failed": failed, "missed": missed,
                       "records": records}, f, indent=1)
    if missed:
        alone = sum(bool(r.get("failed_alone")) for r in records)
        print(f"({missed} missed: the fault came after the run's end and was not judged"
              + (f"; {alone} of them failed without a fault" if alone else "") + ")")
    print(f"{passed} passed, {failed} failed")
    if interrupted:
        return 130
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
