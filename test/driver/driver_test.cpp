// Drives the child suites (test/children/child_suite.cpp) that are meant to fail, hang and crash,
// under mpirun, self-spawn and a torchrun-style launch, and asserts on exit codes and output.
// This binary itself is an ordinary single-process gtest program.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifndef C10DTEST_CHILD_SUITE
#error "C10DTEST_CHILD_SUITE must name the child suite binary"
#endif
#ifndef C10DTEST_PLANTED_BUGS
#error "C10DTEST_PLANTED_BUGS must name the planted-bug suite binary"
#endif
#ifndef C10DTEST_MPIEXEC
#define C10DTEST_MPIEXEC ""
#endif

#include "child_process.hpp"

namespace fs = std::filesystem;

namespace {

constexpr int kExitTestsFailed = 1;
constexpr int kExitConfigError = 2;
constexpr int kExitTimeout = 3;
constexpr int kExitRankDied = 4;

using c10dtest_driver::count;
using c10dtest_driver::Outcome;
using c10dtest_driver::run;
using c10dtest_driver::unique_tag;

// Lines that blame a rank: "[  DEAD    ] rank R of W ..." (each names one rank).
std::vector<int> blamed(const std::string& output) {
  static const std::regex dead(R"(\[  DEAD    \] rank (\d+) of)");
  std::vector<int> ranks;
  for (std::sregex_iterator it(output.begin(), output.end(), dead), end; it != end; ++it) {
    ranks.push_back(std::stoi((*it)[1]));
  }
  return ranks;
}

bool python_parses_xml(const fs::path& file, std::string* why) {
  const Outcome o = run("python3 -c \"import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])\" " +
                        file.string());
  *why = o.output;
  return o.exit_code == 0;
}

// The pids of the processes whose environment carries `tag` (the ranks of one driven run).
std::vector<pid_t> pids_tagged(const std::string& tag) {
  std::vector<pid_t> found;
  const std::string needle = "C10DTEST_DRIVER_TAG=" + tag;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream env(entry.path() / "environ", std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
    if (content.find(needle) != std::string::npos) found.push_back(std::stoi(name));
  }
  return found;
}

int processes_tagged(const std::string& tag) { return static_cast<int>(pids_tagged(tag).size()); }

// A loopback port the kernel just handed out (bound, then released for the rendezvous to take);
// -1 with `why` set when it could not get one.
int free_port(std::string* why) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *why = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    *why = std::string("bind: ") + std::strerror(errno);
  } else if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    *why = std::string("getsockname: ") + std::strerror(errno);
  } else {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

enum class Launch { kMpirun, kSelf };

std::string launch_name(Launch l) { return l == Launch::kMpirun ? "Mpirun" : "SelfSpawn"; }

// The command that runs the child suite on `ranks` ranks with `args`.
std::string child(Launch launch, int ranks, const std::string& args, const std::string& tag) {
  const std::string env = "C10DTEST_DRIVER_TAG=" + tag + " ";
  const std::string bin = C10DTEST_CHILD_SUITE;
  if (launch == Launch::kSelf) {
    return env + bin + " --c10dtest_world_size=" + std::to_string(ranks) + " " + args;
  }
  return env + C10DTEST_MPIEXEC + std::string(" -x C10DTEST_DRIVER_TAG -n ") +
         std::to_string(ranks) + " " + bin + " " + args;
}


class ChildSuite : public ::testing::TestWithParam<Launch> {
 protected:
  void SetUp() override {
    if (GetParam() == Launch::kMpirun && std::string(C10DTEST_MPIEXEC).empty()) {
      GTEST_SKIP() << "no mpiexec found at configure time";
    }
    tag_ = unique_tag();
  }
  void TearDown() override {
    EXPECT_EQ(processes_tagged(tag_), 0) << "ranks outlived the run";
  }
  Outcome run_child(int ranks, const std::string& args, int limit_s = 180) {
    return run(child(GetParam(), ranks, "--gtest_color=no " + args, tag_), limit_s);
  }
  std::string tag_;
};

TEST_P(ChildSuite, FailureOnlyOnRankTwoIsReportedOnceNamingRankTwo) {
  const Outcome o = run_child(4, "--gtest_filter=Failures.*");
  EXPECT_EQ(o.exit_code, kExitTestsFailed) << o.output;
  // gtest's lines, the failure's message naming its rank, and a summary line naming it again.
  EXPECT_NE(o.output.find(": Failure\n[rank 2 of 4] Expected: (rank()) != (2)"), std::string::npos)
      << o.output;
  EXPECT_EQ(count(o.output, "planted failure"), 1) << o.output;
  EXPECT_NE(o.output.find("[  FAILED  ] Failures.OnlyRankTwoFails ("), std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("[  FAILED  ] Failures.OnlyRankTwoFails\n"), std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("\nc10dtest: Failures.OnlyRankTwoFails failed on rank 2 of 4\n"),
            std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("[       OK ] Failures.NextTestPasses"), std::string::npos) << o.output;
}

TEST_P(ChildSuite, RankLeavingEarlyDoesNotHangItsPeersAndTheNextTestRuns) {
  const Outcome o = run_child(4, "--gtest_filter=EarlyExit.* --c10dtest_timeout=120");
  EXPECT_EQ(o.exit_code, kExitTestsFailed) << o.output;
  EXPECT_LT(o.seconds, 60) << "the peers waited for the watchdog instead of failing fast";
  // The rank that failed first (the cause) is printed first, then its peers' broken collectives.
  for (const char* test : {"AssertOnRankOneWhileOthersAllgather", "ThrowOnRankOneWhileOthersAllreduce"}) {
    const std::regex first(std::string(R"(\[ RUN      \] EarlyExit\.)") + test +
                           R"(\n[^\n]*: Failure\n\[rank 1 of 4\] )");
    EXPECT_TRUE(std::regex_search(o.output, first)) << test << "\n" << o.output;
    EXPECT_EQ(count(o.output, std::string("\nc10dtest: EarlyExit.") + test +
                                  " failed on ranks 0, 1, 2, 3 of 4, first on rank 1\n"),
              1)
        << o.output;
  }
  EXPECT_NE(o.output.find("planted fatal failure"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("planted exception"), std::string::npos) << o.output;
  EXPECT_EQ(count(o.output, "first on rank 1"), 2) << o.output;
  EXPECT_NE(o.output.find("[       OK ] EarlyExit.NextTestRunsOnRebuiltGroup"), std::string::npos)
      << o.output;
}

TEST_P(ChildSuite, AFailedTestDropsTheCachedGroupsAndNobodyWaitsOnThem) {
  const Outcome o = run_child(4, "--gtest_filter=CachedGroups.* --c10dtest_timeout=120");
  EXPECT_EQ(o.exit_code, kExitTestsFailed) << o.output;
  EXPECT_LT(o.seconds, 60) << "rank 0 waited for the watchdog instead of failing fast";
  EXPECT_NE(o.output.find("[       OK ] CachedGroups.FirstUseMakesTheGroup"), std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("planted fatal failure"), std::string::npos) << o.output;
  EXPECT_EQ(o.output.find("did not find the group cached"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("[       OK ] CachedGroups.NextTestMakesANewGroup"), std::string::npos)
      << o.output;
}

TEST_P(ChildSuite, SleepingRankHitsTheWatchdogWithItsStack) {
  const Outcome o = run_child(4, "--gtest_filter=Hang.RankTwoSleepsForever:Passing.* "
                                 "--c10dtest_timeout=3");
  EXPECT_EQ(o.exit_code, kExitTimeout) << o.output;
  EXPECT_NE(o.output.find("[  TIMEOUT ] Hang.RankTwoSleepsForever did not finish within 3000 ms "
                          "on rank 2 of 4 (ranks 0, 1, 3 finished and waited)"),
            std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("sleep_forever_in_rank_two"), std::string::npos) << o.output;
  EXPECT_EQ(o.output.find("[ RUN      ] Passing."), std::string::npos)
      << "the run went on after a hang";
}

TEST_P(ChildSuite, RunEndedByTheWatchdogStillLeavesAnXmlReport) {
  const fs::path dir = fs::temp_directory_path() / ("c10dtest-xml-hang-" + tag_);
  fs::create_directories(dir);
  const Outcome o = run_child(4, "--gtest_filter=Hang.RankTwoSleepsForever --c10dtest_timeout=3 "
                                 "--gtest_output=xml:" + dir.string() + "/");
  EXPECT_EQ(o.exit_code, kExitTimeout) << o.output;
  const fs::path file = dir / "child_suite.xml";
  ASSERT_TRUE(fs::exists(file)) << o.output;
  std::ifstream in(file);
  const std::string xml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(xml.find("<testcase name=\"RankTwoSleepsForever\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("did not finish within 3000 ms on rank 2 of 4"), std::string::npos) << xml;
  fs::remove_all(dir);
}

TEST_P(ChildSuite, HungCollectiveHitsTheWatchdog) {
  const Outcome o = run_child(4, "--gtest_filter=Hang.CollectiveNeverMatched "
                                 "--c10dtest_timeout=3 --c10dtest_collective_timeout=100");
  EXPECT_EQ(o.exit_code, kExitTimeout) << o.output;
  EXPECT_NE(o.output.find("did not finish within 3000 ms on ranks 1, 2, 3 of 4 (rank 0 finished "
                          "and waited)"),
            std::string::npos)
      << o.output;
  EXPECT_LT(o.seconds, 60);
}

TEST_P(ChildSuite, PerTestTimeoutOverridesTheRunTimeout) {
  const Outcome o = run_child(2, "--gtest_filter=Hang.OwnShortTimeout --c10dtest_timeout=120");
  EXPECT_EQ(o.exit_code, kExitTimeout) << o.output;
  EXPECT_NE(o.output.find("did not finish within 1500 ms"), std::string::npos) << o.output;
  EXPECT_LT(o.seconds, 60);
}

TEST_P(ChildSuite, RanksCutOffFromRankZeroEndOnTheirOwn) {
  // No RST, no FIN: the other ranks' store calls would wait in recv() for as long as TCP
  // retries (many minutes); they must give up after the heartbeat timeout instead.
  const Outcome o = run_child(3, "--gtest_filter=Hang.RankZeroFreezes --c10dtest_timeout=120 "
                                 "--c10dtest_heartbeat_timeout=2");
  EXPECT_NE(o.exit_code, 0) << o.output;
  // The others name rank 0: they heard nothing on the lifeline (or their store calls went
  // unanswered) for the heartbeat timeout + 1 s. Rank 1 prints the verdict, every other rank a
  // line of its own (mpirun may end rank 1 before it prints, once rank 2 has exited).
  EXPECT_TRUE(o.output.find("[  DEAD    ] rank 0 of 3 stopped answering: rank 1 of 3 ") !=
                  std::string::npos ||
              o.output.find("lost the control plane served by rank 0: rank 0 of 3 stopped "
                            "answering") != std::string::npos)
      << o.output;
  // Resumed by mpirun, rank 0 finds it was the one the others lost: it blames only itself.
  for (int r : blamed(o.output)) EXPECT_EQ(r, 0) << o.output;
  if (GetParam() == Launch::kSelf) EXPECT_EQ(o.exit_code, kExitRankDied) << o.output;
  EXPECT_LT(o.seconds, 60);
}

TEST_P(ChildSuite, SegfaultOnRankThreeIsNamed) {
  const Outcome o = run_child(4, "--gtest_filter=Crash.SegfaultOnRankThree --c10dtest_timeout=120");
  // The crashing rank exits with c10dtest's code (core dumps are off), so every launcher says 4.
  EXPECT_EQ(o.exit_code, kExitRankDied) << o.output;
  EXPECT_NE(o.output.find("rank 3 of 4: SIGSEGV (segmentation fault) in test "
                          "Crash.SegfaultOnRankThree"),
            std::string::npos)
      << o.output;
  EXPECT_EQ(count(o.output, "[  DEAD    ] rank 3 of 4 crashed: SIGSEGV (segmentation fault) in "
                            "test Crash.SegfaultOnRankThree"),
            1)
      << o.output;
  EXPECT_LT(o.seconds, 60);
}

TEST_P(ChildSuite, AbortOnRankOneIsNamed) {
  const Outcome o = run_child(4, "--gtest_filter=Crash.AbortOnRankOne --c10dtest_timeout=120");
  EXPECT_EQ(o.exit_code, kExitRankDied) << o.output;
  EXPECT_NE(o.output.find("rank 1 of 4: SIGABRT (abort) in test Crash.AbortOnRankOne"),
            std::string::npos)
      << o.output;
  EXPECT_EQ(count(o.output, "[  DEAD    ] rank 1 of 4 crashed: SIGABRT (abort)"), 1) << o.output;
  EXPECT_LT(o.seconds, 60);
}

TEST_P(ChildSuite, ExitOnRankOneIsNamed) {
  const Outcome o = run_child(4, "--gtest_filter=Crash.ExitOnRankOne --c10dtest_timeout=120");
  EXPECT_NE(o.exit_code, 0) << o.output;
  EXPECT_EQ(count(o.output, "[  DEAD    ] rank 1 of 4 "), 1) << o.output;
  if (GetParam() == Launch::kSelf) {
    // exit(7) is not c10dtest's code: a rank died.
    EXPECT_EQ(o.exit_code, kExitRankDied);
    EXPECT_NE(o.output.find("exited with code 7"), std::string::npos) << o.output;
  } else {
    // mpirun ends the job and names the process itself.
    EXPECT_NE(o.output.find("Exit code:    7"), std::string::npos) << o.output;
    EXPECT_NE(o.output.find(",1]"), std::string::npos) << o.output;
  }
  EXPECT_LT(o.seconds, 60);
}

// Whichever rank dies, and however: the report holds the finished tests and the one that the
// death interrupted, naming the rank; nobody else is blamed; the exit code is c10dtest's, except
// for SIGKILL under mpirun, where mpirun reports the signal (128 + 9) itself.
TEST_P(ChildSuite, ReportSurvivesEveryDeathAndBlamesTheRightRank) {
  const fs::path dir = fs::temp_directory_path() / ("c10dtest-xml-death-" + tag_);
  for (const std::string victim : {"0:KILL", "2:KILL", "1:SEGV", "0:SEGV", "3:TERM", "0:TERM",
                                   "2:ABRT"}) {
    SCOPED_TRACE(victim);
    fs::remove_all(dir);
    fs::create_directories(dir);
    const int rank = victim[0] - '0';
    const std::string sig = victim.substr(2);
    const Outcome o = run("C10DTEST_CHILD_VICTIM=" + victim + " " +
                          child(GetParam(), 4,
                                "--gtest_color=no --gtest_filter=Dies.* --c10dtest_timeout=120 "
                                "--gtest_output=xml:" + (dir / "r.xml").string(),
                                tag_));
    if (GetParam() == Launch::kMpirun && sig == "KILL") {
      // The launcher's choice: Open MPI 4 reports the first process's signal (128 + 9).
      EXPECT_TRUE(o.exit_code == 128 + 9 || o.exit_code == kExitRankDied) << o.output;
    } else {
      EXPECT_EQ(o.exit_code, kExitRankDied) << o.output;
    }
    EXPECT_LT(o.seconds, 30) << o.output;
    const std::string who = "rank " + std::to_string(rank) + " of 4";
    if (sig == "TERM" && rank == 0) {
      EXPECT_NE(o.output.find("[  ENDED   ] rank 0 of 4 received SIGTERM during Dies.VictimDies"),
                std::string::npos)
          << o.output;
      EXPECT_TRUE(blamed(o.output).empty()) << o.output;
    } else {
      EXPECT_EQ(blamed(o.output), std::vector<int>{rank}) << o.output;
    }
    EXPECT_EQ(o.output.find("ran after a rank died"), std::string::npos) << o.output;
    const fs::path file = dir / "r.xml";
    ASSERT_TRUE(fs::exists(file)) << o.output;
    std::string why;
    EXPECT_TRUE(python_parses_xml(file, &why)) << why;
    std::ifstream in(file);
    const std::string xml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(xml.find("<testcase name=\"FirstPasses\""), std::string::npos) << xml;
    EXPECT_NE(xml.find("classname=\"Dies\" />"), std::string::npos) << "FirstPasses passed\n" << xml;
    EXPECT_NE(xml.find("[rank 1 of 4] Expected: (rank()) != (1)"), std::string::npos) << xml;
    const auto interrupted = xml.find("<testcase name=\"VictimDies\"");
    ASSERT_NE(interrupted, std::string::npos) << xml;
    EXPECT_NE(xml.find("c10dtest: the run ended here&#x0A;", interrupted), std::string::npos)
        << xml;
    EXPECT_NE(xml.find(who, interrupted), std::string::npos) << xml;
    EXPECT_EQ(xml.find("NeverRuns"), std::string::npos) << xml;
    EXPECT_NE(xml.find("<testsuites tests=\"3\" failures=\"2\""), std::string::npos) << xml;
    EXPECT_EQ(processes_tagged(tag_), 0) << "ranks outlived the run";
  }
  fs::remove_all(dir);
}

// A SIGTERM that comes just before the run ends is never dropped: the run does not pass, and
// rank 0 says why (before the fix, the lifeline closed while it waited for news of a death, and
// every rank exited 0).
TEST_P(ChildSuite, SigtermJustBeforeTheEndNeverPasses) {
  const Outcome o = run_child(4, "--gtest_filter=LateTerm.* --c10dtest_timeout=120");
  EXPECT_EQ(o.exit_code, kExitRankDied) << o.output;
  EXPECT_NE(o.output.find("[  ENDED   ] rank 0 of 4 received SIGTERM during "), std::string::npos)
      << o.output;
  EXPECT_TRUE(blamed(o.output).empty()) << o.output;
  EXPECT_EQ(processes_tagged(tag_), 0) << "ranks outlived the run";
}

TEST_P(ChildSuite, ReportHoldsEveryFinishedTestWhileTheRunGoesOn) {
  const fs::path dir = fs::temp_directory_path() / ("c10dtest-xml-sofar-" + tag_);
  fs::create_directories(dir);
  const Outcome o = run_child(2, "--gtest_filter=ReportSoFar.* --gtest_output=xml:" +
                                     (dir / "r.xml").string());
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find("[  PASSED  ] 2 tests."), std::string::npos) << o.output;
  fs::remove_all(dir);
}

TEST_P(ChildSuite, CrashInAGtestDeathTestStaysInItsChild) {
  const Outcome o = run_child(2, "--gtest_filter=DeathInChild.*");
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find("[  PASSED  ] 1 test."), std::string::npos) << o.output;
  EXPECT_TRUE(blamed(o.output).empty()) << o.output;
}

// Rank 2 stops mid-test; rank 0 names it after the heartbeat timeout and ends the run. Under
// mpirun the launcher then resumes it: it obeys rank 0's verdict and blames nobody (it must not
// take its own stop for rank 0's silence).
TEST_P(ChildSuite, StoppedRankIsNamedAndBlamesNobodyWhenResumed) {
  const Outcome o = run_child(4, "--gtest_filter=Hang.RankTwoFreezes --c10dtest_timeout=120 "
                                 "--c10dtest_heartbeat_timeout=2");
  EXPECT_NE(o.exit_code, 0) << o.output;
  if (GetParam() == Launch::kSelf) EXPECT_EQ(o.exit_code, kExitRankDied) << o.output;
  EXPECT_NE(o.output.find("[  DEAD    ] rank 2 of 4 stopped responding: no heartbeat for "),
            std::string::npos)
      << o.output;
  EXPECT_EQ(blamed(o.output), std::vector<int>{2}) << o.output;
  EXPECT_EQ(o.output.find("lost the control plane"), std::string::npos) << o.output;
  EXPECT_LT(o.seconds, 2 + 10) << "heartbeat timeout + 10 s";
}

TEST_P(ChildSuite, SkipIsASkipOnEveryRank) {
  const Outcome o = run_child(4, "--gtest_filter=Skips.*");
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find("[  SKIPPED ] 3 tests, listed below:"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("[  SKIPPED ] Skips.OnlyRankOneSkips\n"), std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("\nc10dtest: Skips.OnlyRankOneSkips was skipped on rank 1 of 4\n"),
            std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("[  PASSED  ] 0 tests."), std::string::npos) << o.output;
  EXPECT_EQ(o.output.find("ran although"), std::string::npos) << o.output;
}

// The GPUs this machine shows: the NVIDIA driver's device files, as many as CUDA_VISIBLE_DEVICES
// lets through when it is set.
int visible_gpus() {
  int files = 0;
  static const std::regex device(R"(nvidia\d+)");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/dev", ec)) {
    if (std::regex_match(e.path().filename().string(), device)) ++files;
  }
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (visible == nullptr) return files;
  const std::string list = visible;
  const int listed = list.empty() ? 0 : 1 + static_cast<int>(std::count(list.begin(), list.end(), ','));
  return std::min(files, listed);
}

// A world that cannot run here (NCCL without NCCL or without a GPU per rank, CUDA tensors
// without a GPU) skips every DistributedTest on every rank with the reason, and exits 0; on a
// machine where it can run, the same suite passes. Which one is due is decided from this build
// and machine beforehand, so neither outcome can stand in for the other.
void expect_skipped_everywhere(const Outcome& o, const std::string& reason) {
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(count(o.output, "c10dtest: every DistributedTest is skipped: " + reason), 1)
      << o.output;
  EXPECT_NE(o.output.find("[  SKIPPED ] 3 tests, listed below:"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("[  PASSED  ] 0 tests."), std::string::npos) << o.output;
}

void expect_passed(const Outcome& o) {
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(o.output.find("every DistributedTest is skipped"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("[  PASSED  ] 3 tests."), std::string::npos) << o.output;
}

TEST_P(ChildSuite, NcclWorldThatCannotRunHereSkipsEveryTestWithTheReason) {
  const Outcome o = run_child(2, "--gtest_filter=Passing.* --c10dtest_backend=nccl");
  // NCCL compiled in and a GPU per rank: it runs.
  if (C10DTEST_DRIVER_WITH_NCCL && visible_gpus() >= 2) {
    expect_passed(o);
  } else {
    expect_skipped_everywhere(o, "nccl world on cuda: ");
  }
}

TEST_P(ChildSuite, CudaTensorsWithoutAGpuSkipEveryTestWithTheReason) {
  const Outcome o = run_child(2, "--gtest_filter=Passing.* --c10dtest_device=cuda");
  if (C10DTEST_DRIVER_TORCH_CUDA && visible_gpus() >= 1) {
    expect_passed(o);
  } else {
    expect_skipped_everywhere(o, "gloo world on cuda: rank 0: ");
  }
}

TEST_P(ChildSuite, NcclWithCpuTensorsIsAConfigError) {
  const Outcome o =
      run_child(2, "--gtest_filter=Passing.* --c10dtest_backend=nccl --c10dtest_device=cpu");
  EXPECT_EQ(o.exit_code, kExitConfigError) << o.output;
  EXPECT_NE(o.output.find("NCCL only serves CUDA tensors"), std::string::npos) << o.output;
}

TEST_P(ChildSuite, TwoSuitesStartedAtOnceBothPass) {
  const std::string a = child(GetParam(), 2, "--gtest_filter=Passing.*", tag_);
  const std::string b = child(GetParam(), 2, "--gtest_filter=Passing.*", tag_);
  const Outcome o = run("(" + a + " > /dev/null 2>&1; echo first=$?) & (" + b +
                        " > /dev/null 2>&1; echo second=$?) & wait");
  EXPECT_NE(o.output.find("first=0"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("second=0"), std::string::npos) << o.output;
}

TEST_P(ChildSuite, OneXmlReportFromRankZeroWithEveryRanksFailures) {
  const fs::path dir = fs::temp_directory_path() / ("c10dtest-xml-" + tag_);
  fs::create_directories(dir);
  const Outcome o = run_child(4, "--gtest_filter=Failures.* --gtest_output=xml:" +
                                     (dir / "report.xml").string());
  EXPECT_EQ(o.exit_code, kExitTestsFailed) << o.output;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path());
  ASSERT_EQ(files.size(), 1u);
  std::ifstream in(files[0]);
  const std::string xml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(xml.find("[rank 2 of 4] Expected: (rank()) != (2)"), std::string::npos) << xml;
  EXPECT_NE(xml.find("tests=\"2\" failures=\"1\""), std::string::npos) << xml;
  fs::remove_all(dir);
}

TEST_P(ChildSuite, ShuffleUsesOneSeedOnEveryRank) {
  // Different seeds would give the ranks different orders and stop the run with exit code 2.
  const Outcome o = run_child(4, "--gtest_filter=Passing.* --gtest_shuffle --gtest_repeat=3");
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(count(o.output, "[  PASSED  ] 3 tests."), 3) << o.output;
}

TEST_P(ChildSuite, BriefOutputAndColourFollowGtestFlags) {
  const Outcome brief = run_child(2, "--gtest_filter=Passing.* --gtest_brief=1");
  EXPECT_EQ(brief.exit_code, 0) << brief.output;
  EXPECT_EQ(count(brief.output, "[ RUN      ]"), 0) << brief.output;
  EXPECT_EQ(count(brief.output, "[  PASSED  ] 3 tests."), 1) << brief.output;
  // GTEST_COLOR=yes colours the output even into a pipe; --gtest_color=no wins over it.
  const std::string coloured =
      "GTEST_COLOR=yes " + child(GetParam(), 2, "--gtest_filter=Passing.*", tag_);
  const Outcome yes = run(coloured);
  EXPECT_EQ(yes.exit_code, 0) << yes.output;
  EXPECT_NE(yes.output.find("\033[0;32m[  PASSED  ] \033[m"), std::string::npos) << yes.output;
  const Outcome no = run(coloured + " --gtest_color=no");
  EXPECT_EQ(no.output.find("\033["), std::string::npos) << no.output;
}

TEST_P(ChildSuite, PerRankLogsGoToTheLogDirectory) {
  const fs::path dir = fs::temp_directory_path() / ("c10dtest-logs-" + tag_);
  const Outcome o = run_child(3, "--gtest_filter=Passing.* --c10dtest_log_dir=" + dir.string());
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_FALSE(fs::exists(dir / "rank-0.log"));
  EXPECT_TRUE(fs::exists(dir / "rank-1.log"));
  EXPECT_TRUE(fs::exists(dir / "rank-2.log"));
  fs::remove_all(dir);
}

TEST_P(ChildSuite, ListTestsPrintsOnce) {
  const Outcome o = run_child(2, "--gtest_filter=Passing.* --gtest_list_tests");
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(count(o.output, "Passing."), 1) << o.output;
}

TEST_P(ChildSuite, SuiteSetUpFailureOnOneRankSkipsTheSuiteEverywhereAndIsNamed) {
  const Outcome o = run_child(4, "--gtest_filter=SuiteSetUpFailsOnRankOne.*");
  EXPECT_EQ(o.exit_code, kExitTestsFailed) << o.output;
  // Printed before the first test starts, as gtest prints a SetUpTestSuite failure.
  const auto failure = o.output.find(": Failure\n[rank 1 of 4] ");
  EXPECT_LT(failure, o.output.find("[ RUN      ] SuiteSetUpFailsOnRankOne.")) << o.output;
  EXPECT_EQ(count(o.output, "planted suite failure"), 1) << o.output;
  // The other ranks do not run the suite's tests (they would wait for rank 1 in a barrier).
  EXPECT_NE(o.output.find(": Skipped\n[ranks 0, 2, 3 of 4] SetUpTestSuite failed on rank 1 of 4\n"),
            std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("[  SKIPPED ] SuiteSetUpFailsOnRankOne.TestItselfPasses ("),
            std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("[  SKIPPED ] SuiteSetUpFailsOnRankOne.SecondTestPasses ("),
            std::string::npos)
      << o.output;
  EXPECT_EQ(o.output.find("ran although"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("[  FAILED  ] SuiteSetUpFailsOnRankOne: SetUpTestSuite or "
                          "TearDownTestSuite\n"),
            std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("\nc10dtest: SuiteSetUpFailsOnRankOne (SetUpTestSuite or "
                          "TearDownTestSuite) failed on rank 1 of 4\n"),
            std::string::npos)
      << o.output;
  EXPECT_LT(o.seconds, 60);
}

TEST_P(ChildSuite, HangInTearDownTestSuiteHitsTheWatchdog) {
  const Outcome o = run_child(2, "--gtest_filter=SuiteTearDownHangs.* --c10dtest_timeout=3");
  EXPECT_EQ(o.exit_code, kExitTimeout) << o.output;
  EXPECT_NE(o.output.find("[  TIMEOUT ] SuiteTearDownHangs (SetUpTestSuite, TearDownTestSuite or "
                          "fixture code) did not finish within 3000 ms on rank 0 of 2"),
            std::string::npos)
      << o.output;
}

INSTANTIATE_TEST_SUITE_P(Launchers, ChildSuite, ::testing::Values(Launch::kMpirun, Launch::kSelf),
                         [](const auto& info) { return launch_name(info.param); });

// A rank that dies before main, before any rank has reported a test: the self-spawn supervisor
// saw it, and the XML report names it (written by rank 0 from the supervisor's note, or by the
// supervisor itself when rank 0 was ended before it could write).
TEST(SelfSpawnOnly, RankKilledBeforeMainIsNamedInTheReport) {
  const std::string tag = unique_tag();
  const fs::path dir = fs::temp_directory_path() / ("c10dtest-xml-early-" + tag);
  fs::create_directories(dir);
  const fs::path file = dir / "r.xml";
  const Outcome o = run("C10DTEST_CHILD_KILLED_BEFORE_MAIN=1 " +
                        child(Launch::kSelf, 4,
                              "--gtest_color=no --gtest_filter=Passing.* --gtest_output=xml:" +
                                  file.string(),
                              tag));
  EXPECT_EQ(o.exit_code, kExitRankDied) << o.output;
  EXPECT_NE(o.output.find("rank 1 of 4 (pid "), std::string::npos) << o.output;
  ASSERT_TRUE(fs::exists(file)) << o.output;
  std::string why;
  EXPECT_TRUE(python_parses_xml(file, &why)) << why;
  std::ifstream in(file);
  const std::string xml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto failure = xml.find("<failure message=");
  ASSERT_NE(failure, std::string::npos) << xml;
  EXPECT_NE(xml.find("rank 1 of 4", failure), std::string::npos) << xml;
  EXPECT_NE(xml.find("was killed by signal 9", failure), std::string::npos) << xml;
  EXPECT_EQ(processes_tagged(tag), 0) << "ranks outlived the run";
  fs::remove_all(dir);
}

TEST(MpirunOnly, DifferentTestListsOnTheRanksAreAClearError) {
  if (std::string(C10DTEST_MPIEXEC).empty()) GTEST_SKIP() << "no mpiexec found at configure time";
  // Open MPI 5.0.7 (Debian 13) crashes on any MPMD command line, c10dtest or not.
  const Outcome probe = run(std::string(C10DTEST_MPIEXEC) + " -n 1 true : -n 1 true");
  if (probe.exit_code != 0) {
    GTEST_SKIP() << "this mpiexec cannot run MPMD jobs (\"mpiexec -n 1 true : -n 1 true\" "
                    "exited "
                 << probe.exit_code << ")";
  }
  const std::string bin = C10DTEST_CHILD_SUITE;
  const Outcome o = run(std::string(C10DTEST_MPIEXEC) + " -n 1 " + bin +
                        " --gtest_filter=Passing.* : -n 1 " + bin + " --gtest_filter=Passing.A");
  EXPECT_EQ(o.exit_code, kExitConfigError) << o.output;
  EXPECT_NE(o.output.find("rank 1 (1 tests) differs from rank 0 (3 tests) at position 1: rank 0 "
                          "has 'Passing.B', rank 1 has '<end>'"),
            std::string::npos)
      << o.output;
}

// torchrun-style: four processes started with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT and no
// supervisor; a rank that exits is found by the heartbeat.
std::string torchrun(int ranks, const std::string& args, const std::string& tag) {
  std::string why;
  const int port = free_port(&why);
  if (port < 0) throw std::runtime_error("no free loopback port for MASTER_PORT: " + why);
  std::ostringstream cmd;
  for (int r = 0; r < ranks; ++r) {
    cmd << "(C10DTEST_DRIVER_TAG=" << tag << " RANK=" << r << " WORLD_SIZE=" << ranks
        << " MASTER_ADDR=127.0.0.1 MASTER_PORT=" << port << " " << C10DTEST_CHILD_SUITE
        << " --gtest_color=no " << args << "; echo rank" << r << "=$?) & ";
  }
  cmd << "wait";
  return cmd.str();
}

TEST(TorchrunStyle, PassingSuitePassesOnEveryRank) {
  const std::string tag = unique_tag();
  const Outcome o = run(torchrun(2, "--gtest_filter=Passing.*", tag));
  EXPECT_NE(o.output.find("rank0=0"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("rank1=0"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("Note: c10dtest runs 2 ranks (torchrun)."), std::string::npos) << o.output;
  EXPECT_EQ(processes_tagged(tag), 0);
}

TEST(TorchrunStyle, GtestFlagsWorkWithoutALauncher) {
  const std::string tag = unique_tag();
  const Outcome o = run(torchrun(4, "--gtest_filter=Passing.*:Failures.OnlyRankTwoFails "
                                    "--gtest_shuffle --gtest_repeat=2 --gtest_brief=1", tag));
  for (int r = 0; r < 4; ++r) {
    EXPECT_NE(o.output.find("rank" + std::to_string(r) + "=1"), std::string::npos) << o.output;
  }
  EXPECT_EQ(count(o.output, "[ RUN      ]"), 0) << o.output;
  EXPECT_EQ(count(o.output, "[  PASSED  ] 3 tests."), 2) << o.output;
  EXPECT_EQ(count(o.output, "c10dtest: Failures.OnlyRankTwoFails failed on rank 2 of 4\n"), 2)
      << o.output;
  EXPECT_EQ(processes_tagged(tag), 0);
}

TEST(TorchrunStyle, RankThatExitsIsNamedAtOnce) {
  // No launcher watches the ranks: the lifeline tells rank 0 the moment rank 1's process ends.
  const std::string tag = unique_tag();
  const Outcome o = run(torchrun(4, "--gtest_filter=Crash.ExitOnRankOne "
                                    "--c10dtest_heartbeat_timeout=60 --c10dtest_timeout=120", tag));
  EXPECT_NE(o.output.find("[  DEAD    ] rank 1 of 4 died: its process ended without a word"),
            std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("rank0=4"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("rank1=7"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("rank2=4"), std::string::npos) << o.output;
  EXPECT_LT(o.seconds, 60);
  EXPECT_EQ(processes_tagged(tag), 0);
}

// A rank stopped before it reaches the rendezvous (here before main) is named once the others
// have waited the heartbeat timeout, not the 60 s rendezvous timeout.
TEST(TorchrunStyle, RankStoppedAtStartIsNamedWithinTheHeartbeatTimeout) {
  const std::string tag = unique_tag();
  const fs::path dir = fs::temp_directory_path() / ("c10dtest-start-" + tag);
  fs::create_directories(dir);
  std::string why;
  const int port = free_port(&why);
  ASSERT_GT(port, 0) << "no free loopback port for MASTER_PORT: " << why;
  const std::string args = " --gtest_filter=Passing.* --c10dtest_heartbeat_timeout=2 "
                           "--gtest_output=xml:" + (dir / "r.xml").string();
  std::ostringstream script;
  script << "export C10DTEST_DRIVER_TAG=" << tag << " WORLD_SIZE=4 MASTER_ADDR=127.0.0.1 "
         << "MASTER_PORT=" << port << "\n"
         // Rank 2 stops before its main (and so before the rendezvous); nobody resumes it.
         << "RANK=2 sh -c 'kill -STOP $$; exec " << C10DTEST_CHILD_SUITE << args
         << "' >/dev/null 2>&1 &\n"
         << "pids=\n";
  for (int r : {0, 1, 3}) {
    script << "(RANK=" << r << " " << C10DTEST_CHILD_SUITE << args << "; echo rank" << r
           << "=$?) & pids=\"$pids $!\"\n";
  }
  script << "wait $pids\n";
  const fs::path file = dir / "run.sh";
  std::ofstream(file) << script.str();
  const Outcome o = run("sh " + file.string(), 60);
  EXPECT_NE(o.output.find("rank 2 of 4 did not arrive at the start within 2000 ms of the last "
                          "rank that did"),
            std::string::npos)
      << o.output;
  for (int r : {0, 1, 3}) {
    EXPECT_NE(o.output.find("rank" + std::to_string(r) + "=2"), std::string::npos) << o.output;
  }
  EXPECT_LT(o.seconds, 30) << "the ranks waited for the rendezvous timeout";
  std::ifstream in(dir / "r.xml");
  const std::string xml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(xml.find("rank 2 of 4 did not arrive at the start"), std::string::npos) << xml;
  // The stopped rank would wait forever: end it.
  for (pid_t pid : pids_tagged(tag)) kill(pid, SIGKILL);
  for (int i = 0; i < 50 && processes_tagged(tag) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(processes_tagged(tag), 0);
  fs::remove_all(dir);
}

TEST(TorchrunStyle, RankOutsideTheWorldIsAClearError) {
  const Outcome o = run("RANK=5 WORLD_SIZE=4 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 " +
                        std::string(C10DTEST_CHILD_SUITE));
  EXPECT_EQ(o.exit_code, kExitConfigError) << o.output;
  EXPECT_NE(o.output.find("RANK=5 is not below WORLD_SIZE=4"), std::string::npos) << o.output;
}

// ---- the planted-bug suite (test/children/planted_bugs.cpp) ------------------------------------

struct PlantedBug {
  const char* test;
  std::vector<std::string> needles;  // each must appear exactly once in the test's output
  int min_ranks = 1;
};

std::vector<PlantedBug> planted_bugs(int ranks) {
  const std::string last = std::to_string(ranks - 1);
  return {
      {"OffByOneShardOffset", {"'u1.l1.weight' (ShardedTensor [100, 100] Float", "do not tile"}, 2},
      {"ShardsSwappedBetweenTwoRanks",
       {"'u2.l1.weight' (DTensor [100, 100] Float [Shard(0)]) on " +
        std::string(ranks == 2 ? "every rank " : "ranks 0, 1 ")},
       2},
      {"LastUnevenShardTruncated", {"'head.weight' (ShardedTensor [7, 5] Float", "do not tile"}},
      {"ShardOnTheWrongDim", {"'u2.l2.weight' (DTensor [100, 100] Float [Shard(0)])"}},
      {"StaleOptimizerStep", {"'state.u1.seq.1.weight.step': 1 vs expected 2"}},
      {"ExpAvgOfTheWrongParameter", {"'state.u1.l1.weight.exp_avg' (DTensor [100, 100] Float"}},
      {"WrongLrInOneParamGroup", {"'param_groups.1.lr': 0.05 vs expected 0.2"}},
      {"FrozenParameterMissing", {"missing key(s): 'u2.l2.weight'"}},
      {"DtypeSilentlyDowncast",
       {"'u1.seq.1.bias' (DTensor [100] BFloat16 [Shard(0)]) dtype BFloat16 vs expected Float"}},
      {"BufferNotSaved", {"missing key(s): 'buffer'"}},
      {"KeyRenamed", {"missing key(s): 'u2.seq.1.weight'", "unexpected key(s): 'u2.seq.1.w'"}},
      {"OneRanksShardZeroed",
       {"'p' (DTensor [100, 100] Float [Shard(0)])" +
        std::string(ranks > 1 ? " on rank " + last : "")}},
      {"ReplicaDiverged", {"'l.bias' (DTensor [100] Float [Replicate()]) on rank 1:"}, 2},
      {"OptimizerStateOfTheNeighboursShard",
       {"'state.l.weight.exp_avg_sq' (DTensor [100, 100] Float [Shard(0)]) on every rank"},
       2},
  };
}

// One test's output, from its "[ RUN      ]" line to the next test's, without what depends on
// timing (durations, which rank reported first).
std::string block_of(const std::string& out, const std::string& test) {
  const std::string start = "[ RUN      ] Planted." + test + "\n";
  const auto b = out.find(start);
  if (b == std::string::npos) return "";
  // Up to the next test, suite line or summary, whichever comes first.
  std::size_t e = std::string::npos;
  for (const char* next : {"[ RUN      ]", "[----------]", "[==========]"}) {
    e = std::min(e, out.find(next, b + start.size()));
  }
  static const std::regex timing(R"(\(\d+ ms\))");
  return std::regex_replace(out.substr(b, e == std::string::npos ? e : e - b), timing, "(N ms)");
}

class PlantedBugs : public ::testing::TestWithParam<int> {};

// Every planted bug fails with its key named (once, not once per rank), the correct
// implementations pass, and the gather strategy gives the same verdicts with the same messages.
TEST_P(PlantedBugs, EachIsCaughtNamingItsKeyAndBothStrategiesAgree) {
  if (std::string(C10DTEST_MPIEXEC).empty()) GTEST_SKIP() << "no mpiexec found at configure time";
  const int ranks = GetParam();
  const std::string tag = unique_tag();
  const std::string cmd = "C10DTEST_DRIVER_TAG=" + tag + " " + C10DTEST_MPIEXEC +
                          " -x C10DTEST_DRIVER_TAG -n " + std::to_string(ranks) + " " +
                          C10DTEST_PLANTED_BUGS + " --gtest_color=no";
  const Outcome local = run(cmd, 300);
  const Outcome gathered = run(cmd + " --c10dtest_verify_strategy=gather", 300);
  EXPECT_EQ(processes_tagged(tag), 0) << "ranks outlived the run";
  ASSERT_EQ(local.exit_code, kExitTestsFailed) << local.output;
  ASSERT_EQ(gathered.exit_code, kExitTestsFailed) << gathered.output;
  for (const char* correct :
       {"CorrectFsdpModelAndOptimizer", "CorrectDdpModelAndOptimizer", "CorrectShardedTensorLayout"}) {
    EXPECT_NE(local.output.find(std::string("[       OK ] Planted.") + correct), std::string::npos)
        << local.output;
    EXPECT_NE(gathered.output.find(std::string("[       OK ] Planted.") + correct),
              std::string::npos)
        << gathered.output;
  }
  // Caught: the test failed with each of its needles once, the same way under both strategies.
  int caught = 0;
  int expected = 0;
  for (const auto& bug : planted_bugs(ranks)) {
    const std::string block = block_of(local.output, bug.test);
    ASSERT_FALSE(block.empty()) << bug.test << " did not run\n" << local.output;
    if (ranks < bug.min_ranks) {
      EXPECT_NE(block.find("[  SKIPPED ]"), std::string::npos) << block;
      continue;
    }
    ++expected;
    bool ok = block.find("[  FAILED  ] Planted." + std::string(bug.test) + " (N ms)") !=
              std::string::npos;
    EXPECT_TRUE(ok) << block;
    for (const auto& needle : bug.needles) {
      EXPECT_EQ(count(block, needle), 1) << needle << "\n" << block;
      ok = ok && count(block, needle) == 1;
    }
    EXPECT_EQ(block_of(gathered.output, bug.test), block) << "the strategies disagree";
    if (ok && block_of(gathered.output, bug.test) == block) ++caught;
  }
  EXPECT_EQ(caught, expected) << "of " << expected << " planted bugs that can show at " << ranks
                              << " ranks";
  EXPECT_EQ(expected, 14) << "the table of planted bugs changed";
}

INSTANTIATE_TEST_SUITE_P(Ranks, PlantedBugs, ::testing::Values(2, 4),
                         [](const auto& info) { return std::to_string(info.param); });

}  // namespace
