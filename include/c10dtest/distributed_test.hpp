// c10dtest::DistributedTest: the fixture base for tests that run on every rank at once.
//
//   class AllReduce : public c10dtest::DistributedTest {};
//
//   TEST_F(AllReduce, SumsRanks) {
//     C10DTEST_REQUIRE_WORLD_SIZE(2);
//     std::vector<at::Tensor> t{at::full({4}, rank())};
//     process_group()->allreduce(t)->wait();
//     EXPECT_TRUE(t[0].equal(at::full({4}, world_size() * (world_size() - 1) / 2)));
//   }
//
// Link c10dtest::main and run with `mpirun -np 4 ./tests` (or --c10dtest_world_size=4). A failure
// on any rank fails the test on every rank and is printed once by rank 0, naming the rank.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "c10dtest/world.hpp"

namespace c10dtest {

// The seed of the test named `full_name` ("Suite.Test"): a hash of the name mixed with
// --c10dtest_seed (`run_seed`). Identical on every rank, different between tests.
std::uint64_t seed_for(const std::string& full_name, std::uint64_t run_seed);

// seed_for() of the running test and this run's --c10dtest_seed ("" outside a test).
std::uint64_t test_seed();

// Number of CUDA devices visible to this process (0 on a CPU-only LibTorch).
int local_gpu_count();

class DistributedTest : public ::testing::Test {
 protected:
  // Seeds ATen's default generators with seed(), or skips the test when the world cannot run
  // here (World::unavailable_reason(): e.g. an NCCL world without enough GPUs). Overrides must
  // call DistributedTest::SetUp() first and return when it skipped:
  //   void SetUp() override {
  //     DistributedTest::SetUp();
  //     if (IsSkipped()) return;
  //     ...
  //   }
  void SetUp() override;

  int rank() const { return World::instance().rank(); }
  int world_size() const { return World::instance().world_size(); }
  int local_rank() const { return World::instance().local_rank(); }
  // A directory for this test's files (checkpoints, logs), the same path on every rank, as
  // PyTorch's @with_temp_dir: made by rank 0, private to this user ($TMPDIR/c10dtest-<uid>/
  // test-XXXXXX, mode 0700), and removed with its contents after the test, once every rank has
  // finished it (passed or failed). The first call in a test is collective: every rank calls it,
  // in the same order as its other collectives; later calls return the same path. Ranks on
  // several hosts need TMPDIR on a filesystem they share: a rank that cannot see rank 0's
  // directory gets a ConfigError naming it. Only inside a test (SetUp, the body, TearDown).
  const std::string& temp_dir() const { return World::instance().test_temp_dir(); }
  // The world group (native c10d object). Valid for this test only.
  ProcessGroupPtr process_group() const { return World::instance().process_group(); }
  // Where this test's tensors belong: CPU with Gloo, cuda:<local rank> with NCCL, a GPU shared
  // by the ranks with Gloo and --c10dtest_device=cuda. Write tests against it to run them on both.
  c10::Device device() const { return World::instance().device(); }
  std::uint64_t seed() const { return test_seed(); }
  // A barrier on the world group (throws if the group failed, which fails the test).
  void barrier() const;
  // Lets this test run `timeout` from its start before the watchdog ends the run.
  void set_timeout(std::chrono::milliseconds timeout) const {
    World::instance().set_test_timeout(timeout);
  }
  // See World::new_group / new_subgroups: collective, same order on every rank.
  ProcessGroupPtr new_group(const std::vector<int>& ranks) const {
    return World::instance().new_group(ranks);
  }
  ProcessGroupPtr new_group(const std::vector<int>& ranks, BackendKind backend) const {
    return World::instance().new_group(ranks, backend);
  }
  ProcessGroupPtr new_subgroups(const std::vector<std::vector<int>>& groups) const {
    return World::instance().new_subgroups(groups);
  }
};

// For value-parameterised tests: TEST_P over world sizes, backends, ...
template <typename T>
class DistributedTestWithParam : public DistributedTest, public ::testing::WithParamInterface<T> {
};

}  // namespace c10dtest

// Skips the test on every rank unless the world has at least `n` ranks. Use in the test body or
// SetUp (it returns from the function).
#define C10DTEST_REQUIRE_WORLD_SIZE(n)                                                      \
  switch (0)                                                                                \
  case 0:                                                                                   \
  default:                                                                                  \
  if (const int c10dtest_ws_ = ::c10dtest::World::instance().world_size(); c10dtest_ws_ < (n)) \
  GTEST_SKIP() << "needs a world size of at least " << (n) << ", have " << c10dtest_ws_

// Skips the test on every rank unless the world has exactly `n` ranks.
#define C10DTEST_REQUIRE_EXACT_WORLD_SIZE(n)                                                 \
  switch (0)                                                                                \
  case 0:                                                                                   \
  default:                                                                                  \
  if (const int c10dtest_ws_ = ::c10dtest::World::instance().world_size(); c10dtest_ws_ != (n)) \
  GTEST_SKIP() << "needs a world size of exactly " << (n) << ", have " << c10dtest_ws_

// Skips the test on every rank unless every rank sees at least `n` CUDA devices (the decision
// uses the minimum over all ranks, so it is the same everywhere).
#define C10DTEST_REQUIRE_GPUS(n)                                                            \
  switch (0)                                                                                \
  case 0:                                                                                   \
  default:                                                                                  \
  if (const auto c10dtest_gpus_ =                                                          \
          ::c10dtest::World::instance().min_over_ranks(::c10dtest::local_gpu_count());     \
      c10dtest_gpus_ < (n))                                                                 \
  GTEST_SKIP() << "needs " << (n) << " GPU(s) on every rank, the fewest any rank has is "   \
               << c10dtest_gpus_
