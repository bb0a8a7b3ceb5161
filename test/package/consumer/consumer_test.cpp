// A user's suite: the fixture from the package, a collective, and the verifier against a model
// from c10dtest::testing.
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/testing/modules.hpp>

class AllReduce : public c10dtest::DistributedTest {};

TEST_F(AllReduce, SumsEveryRank) {
  std::vector<at::Tensor> t{at::full({4}, static_cast<float>(rank() + 1))};
  process_group()->allreduce(t)->wait();
  const float n = static_cast<float>(world_size());
  EXPECT_TRUE(t[0].equal(at::full({4}, n * (n + 1) / 2)));
}

TEST_F(AllReduce, ShardedModelMatchesItsReference) {
  torch::manual_seed(0);
  c10dtest::testing::CompositeParamModel model;
  const auto mesh = c10dtest::DeviceMesh::create({world_size()});
  const c10dtest::StateDict local = c10dtest::get_model_state_dict(*model);
  c10dtest::StateDict sharded;
  for (std::size_t i = 0; i < local.size(); ++i) {
    const at::Tensor& full = local.value(i).as<at::Tensor>();
    sharded.insert(local.keys()[i], c10dtest::distribute_tensor(full, mesh, {c10dtest::Shard{0}}));
  }
  C10DTEST_EXPECT_STATE_DICT_MATCHES(local, sharded);
}
