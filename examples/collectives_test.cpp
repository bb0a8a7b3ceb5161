// An example suite to copy: real collectives through the world group, checked on every rank.
//
//   mpirun -np 4 ./collectives_example          # or: ./collectives_example --c10dtest_world_size=4
//
// Every TEST_F runs on all ranks at once. A failure on any rank fails the test everywhere and
// rank 0 prints it once, naming the rank.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>

namespace {

class Collectives : public c10dtest::DistributedTest {};

TEST_F(Collectives, AllReduceSumsEveryRanksTensor) {
  std::vector<at::Tensor> tensors{at::full({2, 3}, static_cast<double>(rank() + 1))};
  process_group()->allreduce(tensors)->wait();
  const double expected = world_size() * (world_size() + 1) / 2.0;
  EXPECT_TRUE(at::equal(tensors[0], at::full({2, 3}, expected)))
      << "rank " << rank() << " got " << tensors[0];
}

TEST_F(Collectives, AllGatherCollectsEachRanksPieceInOrder) {
  std::vector<at::Tensor> input{at::arange(3, at::kLong) + 10 * rank()};
  std::vector<std::vector<at::Tensor>> output(1);
  for (int r = 0; r < world_size(); ++r) output[0].push_back(at::empty({3}, at::kLong));
  process_group()->allgather(output, input)->wait();
  for (int r = 0; r < world_size(); ++r) {
    EXPECT_TRUE(at::equal(output[0][r], at::arange(3, at::kLong) + 10 * r)) << "piece of rank " << r;
  }
}

TEST_F(Collectives, BroadcastCopiesTheRootsTensor) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  const int root = world_size() - 1;
  // Same seed on every rank: every rank can compute what the root holds.
  const at::Tensor expected = at::randn({4, 4});
  std::vector<at::Tensor> tensors{rank() == root ? expected.clone() : at::zeros({4, 4})};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  process_group()->broadcast(tensors, opts)->wait();
  EXPECT_TRUE(at::equal(tensors[0], expected));
}

TEST_F(Collectives, SubgroupOfEvenRanksReducesOnlyThem) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  std::vector<int> even;
  for (int r = 0; r < world_size(); r += 2) even.push_back(r);
  auto group = new_group(even);  // every rank calls it; odd ranks get nullptr
  if (rank() % 2 != 0) {
    EXPECT_FALSE(group);
    return;
  }
  ASSERT_TRUE(group);
  std::vector<at::Tensor> t{at::full({1}, static_cast<double>(rank()))};
  group->allreduce(t)->wait();
  double expected = 0;
  for (int r : even) expected += r;
  EXPECT_EQ(t[0].item<double>(), expected);
}

}  // namespace
