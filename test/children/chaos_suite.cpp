// The victim suite of scripts/chaos.py: ten tests that do nothing but real collectives on small
// CPU tensors for a fraction of a second each (about 0.2-0.3 s at 4 ranks on two cores), so a
// fault sent to one rank at a random moment lands in start-up, inside a collective, between two
// tests or near the end of the run. Never run by CTest on its own; chaos.py launches it under
// mpirun and self-spawn, kills, crashes or freezes one rank, and checks how the run ends.
//
// Each test runs a fixed number of rounds (not a timed loop) so its duration stays the same from
// run to run. Every round checks its results; a mismatch is counted, not asserted, so a rank that
// sees a wrong value keeps calling the same collectives as its peers and the test fails once, at
// its end, naming the first bad round.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>

#include <sstream>
#include <string>
#include <vector>

namespace {

// Each test's number of rounds is calibrated for about 0.25 s at 4 ranks on two CPU cores
// (Gloo; a broadcast costs a fraction of an allreduce there).

class Chaos : public c10dtest::DistributedTest {
 protected:
  // Records the first mismatch; the test checks `bad_` once at its end.
  void check(bool ok, int round, const std::string& what) {
    if (ok) return;
    if (bad_++ == 0) {
      std::ostringstream os;
      os << "round " << round << ": " << what;
      first_bad_ = os.str();
    }
  }
  void expect_clean() const { EXPECT_EQ(bad_, 0) << "first mismatch: " << first_bad_; }

  // Sum of r + offset over all ranks.
  double rank_sum(double offset) const {
    const int n = world_size();
    return n * (n - 1) / 2.0 + n * offset;
  }

  std::vector<std::vector<at::Tensor>> gather_slots(at::IntArrayRef shape,
                                                    at::ScalarType type) const {
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < world_size(); ++r) out[0].push_back(at::empty(shape, type));
    return out;
  }

  int bad_ = 0;
  std::string first_bad_;
};

TEST_F(Chaos, AllreduceSumsRankIds) {
  constexpr int kRounds = 48;
  for (int i = 0; i < kRounds; ++i) {
    std::vector<at::Tensor> t{at::full({16}, static_cast<double>(rank() + i))};
    process_group()->allreduce(t)->wait();
    check(at::equal(t[0], at::full({16}, rank_sum(i))), i, "sum of rank ids");
  }
  expect_clean();
}

TEST_F(Chaos, AllreduceMaxAndMinAgree) {
  constexpr int kRounds = 25;
  for (int i = 0; i < kRounds; ++i) {
    c10d::AllreduceOptions max_opts;
    max_opts.reduceOp = c10d::ReduceOp::MAX;
    std::vector<at::Tensor> hi{at::full({8}, static_cast<double>(rank() * 3 + i))};
    process_group()->allreduce(hi, max_opts)->wait();
    check(at::equal(hi[0], at::full({8}, static_cast<double>((world_size() - 1) * 3 + i))), i,
          "max");

    c10d::AllreduceOptions min_opts;
    min_opts.reduceOp = c10d::ReduceOp::MIN;
    std::vector<at::Tensor> lo{at::full({8}, static_cast<double>(rank() * 3 - i))};
    process_group()->allreduce(lo, min_opts)->wait();
    check(at::equal(lo[0], at::full({8}, static_cast<double>(-i))), i, "min");
  }
  expect_clean();
}

TEST_F(Chaos, AllgatherCollectsEveryRanksPiece) {
  constexpr int kRounds = 65;
  for (int i = 0; i < kRounds; ++i) {
    std::vector<at::Tensor> in{at::arange(4, at::kLong) + 100 * rank() + i};
    auto out = gather_slots({4}, at::kLong);
    process_group()->allgather(out, in)->wait();
    for (int r = 0; r < world_size(); ++r) {
      check(at::equal(out[0][static_cast<std::size_t>(r)], at::arange(4, at::kLong) + 100 * r + i),
            i, "piece of rank " + std::to_string(r));
    }
  }
  expect_clean();
}

TEST_F(Chaos, BroadcastFromEveryRootInTurn) {
  constexpr int kRounds = 230;
  for (int i = 0; i < kRounds; ++i) {
    const int root = i % world_size();
    const at::Tensor expected = at::arange(12, at::kFloat) * static_cast<float>(root + 1) + i;
    std::vector<at::Tensor> t{rank() == root ? expected.clone() : at::zeros({12})};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    process_group()->broadcast(t, opts)->wait();
    check(at::equal(t[0], expected), i, "broadcast from rank " + std::to_string(root));
  }
  expect_clean();
}

TEST_F(Chaos, BarrierThenAllreduceCountsArrivals) {
  constexpr int kRounds = 90;
  for (int i = 0; i < kRounds; ++i) {
    barrier();
    std::vector<at::Tensor> t{at::ones({1}, at::kLong)};
    process_group()->allreduce(t)->wait();
    check(t[0].item<std::int64_t>() == world_size(), i, "arrivals after the barrier");
  }
  expect_clean();
}

TEST_F(Chaos, AllreduceOfAWiderTensor) {
  constexpr int kRounds = 47;
  for (int i = 0; i < kRounds; ++i) {
    std::vector<at::Tensor> t{at::arange(1024, at::kDouble) * (rank() + 1)};
    process_group()->allreduce(t)->wait();
    const double factor = world_size() * (world_size() + 1) / 2.0;
    check(at::equal(t[0], at::arange(1024, at::kDouble) * factor), i, "wide sum");
  }
  expect_clean();
}

TEST_F(Chaos, AllgatherThenLocalSumMatchesAllreduce) {
  constexpr int kRounds = 31;
  for (int i = 0; i < kRounds; ++i) {
    const at::Tensor mine = at::full({6}, static_cast<double>(rank() * rank() + i), at::kDouble);
    std::vector<at::Tensor> in{mine.clone()};
    auto out = gather_slots({6}, at::kDouble);
    process_group()->allgather(out, in)->wait();
    at::Tensor local = at::zeros({6}, at::kDouble);
    for (const auto& piece : out[0]) local += piece;

    std::vector<at::Tensor> summed{mine.clone()};
    process_group()->allreduce(summed)->wait();
    check(at::equal(local, summed[0]), i, "gathered sum against allreduce");
  }
  expect_clean();
}

TEST_F(Chaos, BroadcastThenAllreduceChecksum) {
  constexpr int kRounds = 125;
  for (int i = 0; i < kRounds; ++i) {
    const at::Tensor payload = at::arange(32, at::kLong) * (i + 1);
    std::vector<at::Tensor> t{rank() == 0 ? payload.clone() : at::zeros({32}, at::kLong)};
    c10d::BroadcastOptions opts;
    opts.rootRank = 0;
    process_group()->broadcast(t, opts)->wait();
    check(at::equal(t[0], payload), i, "broadcast payload");
    // Every rank now holds the same payload: its checksum summed over ranks is n times it.
    std::vector<at::Tensor> sum{t[0].sum().reshape({1})};
    process_group()->allreduce(sum)->wait();
    check(sum[0].item<std::int64_t>() == payload.sum().item<std::int64_t>() * world_size(), i,
          "checksum");
  }
  expect_clean();
}

TEST_F(Chaos, MixedCollectivesRoundRobin) {
  constexpr int kRounds = 108;
  for (int i = 0; i < kRounds; ++i) {
    switch (i % 4) {
      case 0: {
        std::vector<at::Tensor> t{at::full({4}, static_cast<double>(rank()))};
        process_group()->allreduce(t)->wait();
        check(at::equal(t[0], at::full({4}, rank_sum(0))), i, "allreduce");
        break;
      }
      case 1: {
        std::vector<at::Tensor> in{at::full({2}, static_cast<std::int64_t>(rank() + i), at::kLong)};
        auto out = gather_slots({2}, at::kLong);
        process_group()->allgather(out, in)->wait();
        for (int r = 0; r < world_size(); ++r) {
          check(out[0][static_cast<std::size_t>(r)].eq(r + i).all().item<bool>(), i,
                "allgather piece of rank " + std::to_string(r));
        }
        break;
      }
      case 2: {
        const int root = world_size() - 1;
        std::vector<at::Tensor> t{rank() == root ? at::full({3}, 7.0 + i) : at::zeros({3})};
        c10d::BroadcastOptions opts;
        opts.rootRank = root;
        process_group()->broadcast(t, opts)->wait();
        check(at::equal(t[0], at::full({3}, 7.0 + i)), i, "broadcast");
        break;
      }
      default:
        barrier();
        break;
    }
  }
  expect_clean();
}

TEST_F(Chaos, AllreduceProductOfPowersOfTwo) {
  constexpr int kRounds = 75;
  for (int i = 0; i < kRounds; ++i) {
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::PRODUCT;
    // Rank r contributes 2^(r mod 3): exact in double for any small world.
    double mine = 1.0;
    for (int k = 0; k < rank() % 3; ++k) mine *= 2.0;
    std::vector<at::Tensor> t{at::full({5}, mine, at::kDouble)};
    process_group()->allreduce(t, opts)->wait();
    double expected = 1.0;
    for (int r = 0; r < world_size(); ++r) {
      for (int k = 0; k < r % 3; ++k) expected *= 2.0;
    }
    check(at::equal(t[0], at::full({5}, expected, at::kDouble)), i, "product");
  }
  expect_clean();
}

}  // namespace
