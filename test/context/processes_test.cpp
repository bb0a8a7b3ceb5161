// The scenario of scenario.hpp with ranks as processes (the runner's world as the context, the
// verifier's exchanges on the control plane), compared with the same scenario run by 4 threads
// of each process: the verdicts and their messages must be the same, word for word.
#include <c10dtest/c10dtest.hpp>

#include "scenario.hpp"

namespace c10dtest {
namespace {

class ContextAsProcesses : public DistributedTest {};

TEST_F(ContextAsProcesses, SameVerdictsAsRanksAsThreads) {
  C10DTEST_REQUIRE_EXACT_WORLD_SIZE(scenario::kRanks);
  const scenario::Outcome mine = scenario::run(current_context(), 2);
  for (const auto& p : mine.problems) ADD_FAILURE() << p;
  EXPECT_NE(mine.planted_message.find("rank 2"), std::string::npos) << mine.planted_message;

  // The same with 4 threads of this process as the ranks, on their own contexts.
  const auto threads = scenario::run_as_threads(2, true);
  const auto& same_rank = threads[static_cast<std::size_t>(rank())];
  for (const auto& p : same_rank.problems) ADD_FAILURE() << "as threads: " << p;
  EXPECT_EQ(mine.planted_message, same_rank.planted_message);
  EXPECT_EQ(mine.gather_message, same_rank.gather_message);
}

}  // namespace
}  // namespace c10dtest
