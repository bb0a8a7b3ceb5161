// Ranks as threads: 4 threads of one process are 4 ranks (one c10d::HashStore, one Gloo group per
// thread, as PyTorch's own C++ c10d tests run), each with its own Context. Nothing here links
// c10dtest::main: meshes, DTensors, gather and verify get every rank and group from the context
// they are given, none from a process-global world.
#include <gtest/gtest.h>

#include "scenario.hpp"

namespace c10dtest {
namespace {

using scenario::kRanks;
using scenario::run_as_threads;

void expect_same_verdicts(const std::vector<scenario::Outcome>& outcomes, int planted_rank) {
  ASSERT_EQ(outcomes.size(), static_cast<std::size_t>(kRanks));
  for (int r = 0; r < kRanks; ++r) {
    const auto& o = outcomes[static_cast<std::size_t>(r)];
    EXPECT_EQ(o.rank, r);
    for (const auto& p : o.problems) ADD_FAILURE() << "rank " << r << ": " << p;
    // Every rank gets the same verdict, naming the key and the rank that differs.
    EXPECT_EQ(o.planted_message, outcomes[0].planted_message) << "rank " << r;
    EXPECT_EQ(o.gather_message, outcomes[0].gather_message) << "rank " << r;
  }
  const std::string& m = outcomes[0].planted_message;
  EXPECT_NE(m.find("l1.weight"), std::string::npos) << m;
  EXPECT_NE(m.find("rank " + std::to_string(planted_rank)), std::string::npos) << m;
  EXPECT_EQ(m.find("l2.weight"), std::string::npos) << m;
  EXPECT_NE(outcomes[0].gather_message.find("l1.weight"), std::string::npos)
      << outcomes[0].gather_message;
}

TEST(RanksAsThreads, ScopedContextServesEveryCall) {
  EXPECT_FALSE(has_context());  // no runner here, and nothing leaks out of the threads
  const auto outcomes = run_as_threads(2, true);
  expect_same_verdicts(outcomes, 2);
  EXPECT_FALSE(has_context());
}

TEST(RanksAsThreads, WithoutAScopedContextTheMeshCarriesIt) {
  // No ScopedContext and no default: DTensors take their rank from their mesh, and
  // gather_state_dict and verify_state_dict take the context of the dict's meshes.
  const auto outcomes = run_as_threads(1, false);
  expect_same_verdicts(outcomes, 1);
}

TEST(Context, NoContextIsAClearError) {
  try {
    current_context();
    FAIL() << "current_context() without a context did not throw";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("make_context"), std::string::npos) << e.what();
  }
}

TEST(Context, BadRankIsAClearError) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  EXPECT_THROW(make_context(store, 4, 4), ConfigError);
  EXPECT_THROW(make_context(store, -1, 4), ConfigError);
}

}  // namespace
}  // namespace c10dtest
