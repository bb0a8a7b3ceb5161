// Child suites that are meant to fail, hang or crash. Never run directly by CTest: the driver
// (test/gtest/driver_test.cpp) runs them under mpirun, self-spawn and a torchrun-style launch
// with a --gtest_filter, and asserts on their exit codes and output.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <iterator>
#include <cstdlib>
#include <string>
#include <stdexcept>
#include <thread>

namespace {

// C10DTEST_CHILD_KILLED_BEFORE_MAIN=<rank>: that self-spawned rank kills itself with SIGKILL
// before main, before c10dtest exists in it (as the OOM killer might while LibTorch loads).
const bool kKilledBeforeMain = [] {
  const char* victim = std::getenv("C10DTEST_CHILD_KILLED_BEFORE_MAIN");
  const char* rank = std::getenv("C10DTEST_SPAWN_RANK");
  if (victim != nullptr && rank != nullptr && std::string(victim) == rank) std::raise(SIGKILL);
  return victim != nullptr;
}();

class Failures : public c10dtest::DistributedTest {};

TEST_F(Failures, OnlyRankTwoFails) {
  EXPECT_NE(rank(), 2) << "planted failure";
}

TEST_F(Failures, NextTestPasses) {
  std::vector<at::Tensor> t{at::ones({2})};
  process_group()->allreduce(t)->wait();
  EXPECT_EQ(t[0][0].item<float>(), static_cast<float>(world_size()));
}

class EarlyExit : public c10dtest::DistributedTest {};

// Rank 1 leaves the test while its peers wait for it in an allgather.
TEST_F(EarlyExit, AssertOnRankOneWhileOthersAllgather) {
  ASSERT_NE(rank(), 1) << "planted fatal failure";
  std::vector<at::Tensor> in{at::ones({4})};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < world_size(); ++r) out[0].push_back(at::empty({4}));
  process_group()->allgather(out, in)->wait();
}

TEST_F(EarlyExit, ThrowOnRankOneWhileOthersAllreduce) {
  if (rank() == 1) throw std::runtime_error("planted exception");
  std::vector<at::Tensor> t{at::ones({4})};
  process_group()->allreduce(t)->wait();
}

// Runs after a failed test: the world group must have been rebuilt on every rank.
TEST_F(EarlyExit, NextTestRunsOnRebuiltGroup) {
  std::vector<at::Tensor> t{at::full({3}, static_cast<float>(rank()))};
  process_group()->allreduce(t)->wait();
  EXPECT_EQ(t[0][0].item<float>(), static_cast<float>(world_size() * (world_size() - 1) / 2));
}

// Groups are cached across tests; a failed test drops them with the world group.
class CachedGroups : public c10dtest::DistributedTest {
 protected:
  // Only compared while the cache keeps the group alive (no weak reference: an intrusive_ptr's
  // object, and so its connections, lives until its weak references are gone too).
  static c10d::ProcessGroup*& first() {
    static c10d::ProcessGroup* group = nullptr;
    return group;
  }
  static std::int64_t sum_over(const c10dtest::ProcessGroupPtr& g, std::int64_t v) {
    std::vector<at::Tensor> t{at::full({1}, v, at::kLong)};
    g->allreduce(t)->wait();
    return t[0].item<std::int64_t>();
  }
};

TEST_F(CachedGroups, FirstUseMakesTheGroup) {
  const auto g = new_group({0, 1});
  if (rank() > 1) return;
  ASSERT_TRUE(g);
  first() = g.get();
  EXPECT_EQ(sum_over(g, rank()), 1);
}

// Rank 1 leaves while rank 0 waits in a collective on the cached group: dropping the cache on
// rank 1 closes the group's connections, so rank 0 fails at once instead of hanging.
TEST_F(CachedGroups, AssertOnRankOneWhileRankZeroUsesTheCachedGroup) {
  const auto g = new_group({0, 1});
  if (rank() > 1) return;
  ASSERT_EQ(g.get(), first()) << "the second request did not find the group cached";
  ASSERT_NE(rank(), 1) << "planted fatal failure";
  sum_over(g, 1);
}

// A group kept from before the failure on either member would make this hang or fail: rank 1's
// new group would wait for rank 0's, or rank 0's old one would find rank 1 gone.
TEST_F(CachedGroups, NextTestMakesANewGroup) {
  const auto g = new_group({0, 1});
  if (rank() > 1) return;
  ASSERT_TRUE(g);
  EXPECT_EQ(sum_over(g, 10 + rank()), 21);
}

class Hang : public c10dtest::DistributedTest {};

// In the anonymous namespace on purpose: the watchdog's stack trace must name it all the same.
// Never inlined, or a Release build's trace could not show it (no frame of its own).
__attribute__((noinline)) void sleep_forever_in_rank_two() {
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

TEST_F(Hang, RankTwoSleepsForever) {
  if (rank() == 2) sleep_forever_in_rank_two();
}

// Rank 0 never joins the allreduce that the others wait in.
TEST_F(Hang, CollectiveNeverMatched) {
  if (rank() == 0) return;
  std::vector<at::Tensor> t{at::ones({4})};
  process_group()->allreduce(t)->wait();
}

// The per-test override shortens the limit for this test only.
TEST_F(Hang, OwnShortTimeout) {
  set_timeout(std::chrono::milliseconds(1500));
  std::this_thread::sleep_for(std::chrono::seconds(30));
}

// Rank 0 stops (SIGSTOP), store server and all: its connections stay open but nothing answers,
// as when its host drops off the network. The other ranks must end on their own.
TEST_F(Hang, RankZeroFreezes) {
  if (rank() == 0) std::raise(SIGSTOP);
  barrier();
}

// Rank 2 stops (SIGSTOP) while the others wait in a barrier. Under mpirun the launcher resumes it
// (SIGCONT, then SIGTERM) after rank 0 ended the run: it must obey, and blame nobody.
TEST_F(Hang, RankTwoFreezes) {
  if (rank() == 2) std::raise(SIGSTOP);
  barrier();
}

class Crash : public c10dtest::DistributedTest {};

TEST_F(Crash, SegfaultOnRankThree) {
  if (rank() == 3) std::raise(SIGSEGV);
  barrier();
}

TEST_F(Crash, AbortOnRankOne) {
  if (rank() == 1) std::abort();
  barrier();
}

TEST_F(Crash, ExitOnRankOne) {
  if (rank() == 1) _exit(7);
  barrier();
}

// The report after a death: two finished tests (one failed), then a rank dies as
// C10DTEST_CHILD_VICTIM="<rank>:<KILL|SEGV|ABRT|TERM|STOP|EXIT7>" says, while the others wait in
// a barrier (STOP: the rank stays stopped until its launcher ends it; EXIT7: exit(7)).
class Dies : public c10dtest::DistributedTest {};

TEST_F(Dies, FirstPasses) {
  std::vector<at::Tensor> t{at::ones({4})};
  process_group()->allreduce(t)->wait();
  EXPECT_EQ(t[0][0].item<float>(), static_cast<float>(world_size()));
}

TEST_F(Dies, SecondFailsOnRankOne) { EXPECT_NE(rank(), 1) << "planted failure before the death"; }

TEST_F(Dies, VictimDies) {
  const char* spec = std::getenv("C10DTEST_CHILD_VICTIM");
  ASSERT_NE(spec, nullptr) << "set C10DTEST_CHILD_VICTIM=<rank>:<signal>";
  const std::string s = spec;
  const int victim = std::stoi(s.substr(0, s.find(':')));
  const std::string sig = s.substr(s.find(':') + 1);
  if (rank() == victim) {
    // EXIT7: the test calls exit(7), as code under test might.
    if (sig == "EXIT7") std::exit(7);
    const int number = sig == "KILL" ? SIGKILL : sig == "SEGV" ? SIGSEGV
                     : sig == "ABRT" ? SIGABRT : sig == "STOP" ? SIGSTOP : SIGTERM;
    std::raise(number);
    // SIGTERM is handled: the rank goes on, as a busy process would, until it is ended.
    std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  barrier();
}

TEST_F(Dies, NeverRuns) { ADD_FAILURE() << "ran after a rank died"; }

// Rank 0 receives SIGTERM in the run's last test and carries on, so the run ends within the
// moment rank 0's lifeline waits for news of a death before it acts on its own signal.
class LateTerm : public c10dtest::DistributedTest {};

TEST_F(LateTerm, RankZeroIsTerminatedAndTheRunEndsAtOnce) {
  if (rank() == 0) std::raise(SIGTERM);
}

// A gtest death test forks a child that inherits the rank's handlers and its connection to rank
// 0: the child's crash must stay the child's (killed by its signal), not end the run.
TEST(DeathInChild, CrashInsideADeathTestStaysInTheChild) {
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(std::raise(SIGSEGV), ::testing::KilledBySignal(SIGSEGV), "");
  EXPECT_EXIT(std::raise(SIGTERM), ::testing::KilledBySignal(SIGTERM), "");
}

// The report holds every finished test while the run goes on (run with --gtest_output=xml:FILE).
class ReportSoFar : public c10dtest::DistributedTest {};

TEST_F(ReportSoFar, FirstPasses) { barrier(); }

TEST_F(ReportSoFar, TheFileAlreadyHoldsTheFirst) {
  const std::string flag = GTEST_FLAG_GET(output);
  ASSERT_EQ(flag.rfind("xml:", 0), 0u) << "run with --gtest_output=xml:FILE";
  if (rank() == 0) {
    std::ifstream in(flag.substr(4));
    const std::string xml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(xml.find("<testcase name=\"FirstPasses\""), std::string::npos) << xml;
    EXPECT_EQ(xml.find("TheFileAlreadyHoldsTheFirst"), std::string::npos) << xml;
  }
  barrier();
}

class Skips : public c10dtest::DistributedTest {};

TEST_F(Skips, NeedsSixtyFourRanks) {
  C10DTEST_REQUIRE_WORLD_SIZE(64);
  ADD_FAILURE() << "ran although the world is too small";
}

TEST_F(Skips, OnlyRankOneSkips) {
  if (rank() == 1) GTEST_SKIP() << "rank one has no use for this";
}

TEST_F(Skips, NeedsAGpu) {
  C10DTEST_REQUIRE_GPUS(1);
  SUCCEED();
}

class Passing : public c10dtest::DistributedTest {};

TEST_F(Passing, A) { barrier(); }
TEST_F(Passing, B) { barrier(); }
TEST_F(Passing, C) {
  std::vector<at::Tensor> t{at::ones({8})};
  process_group()->allreduce(t)->wait();
  EXPECT_EQ(t[0].sum().item<float>(), 8.0f * static_cast<float>(world_size()));
}

}  // namespace

namespace {

// Suite-level code: a failure in SetUpTestSuite on rank 1 only, and a hang in TearDownTestSuite.
class SuiteSetUpFailsOnRankOne : public c10dtest::DistributedTest {
 public:
  static void SetUpTestSuite() {
    if (c10dtest::World::instance().rank() == 1) ADD_FAILURE() << "planted suite failure";
  }
};

TEST_F(SuiteSetUpFailsOnRankOne, TestItselfPasses) { barrier(); }
// Every test of the suite is skipped everywhere, not only the first.
TEST_F(SuiteSetUpFailsOnRankOne, SecondTestPasses) {
  ADD_FAILURE() << "ran although SetUpTestSuite failed on rank 1";
  barrier();
}

class SuiteTearDownHangs : public c10dtest::DistributedTest {
 public:
  static void TearDownTestSuite() {
    if (c10dtest::World::instance().rank() == 0) {
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
};

TEST_F(SuiteTearDownHangs, TestItselfPasses) { barrier(); }

}  // namespace
