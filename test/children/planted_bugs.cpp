// Planted bugs: deliberately wrong sharded state, each a test that must FAIL with a message naming
// the wrong key, beside correct implementations that must pass. Not run by ctest directly: the
// driver (test/driver/driver_test.cpp) runs it under mpirun with both verify strategies and checks
// every verdict and message.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/testing/modules.hpp>
#include <c10dtest/testing/trainers.hpp>
#include <c10dtest/verify.hpp>
#include <torch/optim/adam.h>

namespace {

namespace ct = c10dtest::testing;
using c10dtest::DTensor;
using c10dtest::LocalShard;
using c10dtest::ShardedTensor;
using c10dtest::StateDict;
using c10dtest::StateDictOptions;
using c10dtest::StateList;
using c10dtest::StateValue;

// A local model and an FSDP copy trained two steps on the same data; the tests break the
// distributed state dicts (or build them wrongly) and verify them against the local ones.
class Planted : public c10dtest::DistributedTest, public c10dtest::VerifyStateDictMixin {
 protected:
  void SetUp() override {
    DistributedTest::SetUp();
    if (IsSkipped()) return;
    train(ct::Parallelism::FSDP);
  }

  void train(ct::Parallelism kind, ct::ModelSpec spec = ct::composite_param_model_spec()) {
    at::manual_seed(21);
    local_ = std::make_unique<ct::DataParallelTrainer>(spec, ct::Parallelism::Local,
                                                       ct::adam(1e-2));
    at::manual_seed(21);
    dist_ = std::make_unique<ct::DataParallelTrainer>(spec, kind, ct::adam(1e-2));
    for (int i = 0; i < 2; ++i) {
      const at::Tensor x = at::rand({8, 100});
      local_->step(x);
      dist_->step(x);
    }
    msd_ = local_->model_state_dict();
    osd_ = local_->optimizer_state_dict();
    dist_msd_ = dist_->model_state_dict();
    dist_osd_ = dist_->optimizer_state_dict();
  }

  ::testing::AssertionResult verify_model() { return verify_msd(msd_, dist_msd_); }
  ::testing::AssertionResult verify_optimizer() {
    return verify_osd(local_->model(), local_->optimizer(), osd_, dist_osd_);
  }

  // The DTensor under `key` with this rank's local piece replaced by `local`.
  static DTensor with_local(const DTensor& d, const at::Tensor& local) {
    return DTensor(local, d.mesh(), d.placements(), d.global_shape());
  }
  StateDict& state_of(const std::string& fqn) {
    return dist_osd_.at("state").as<StateDict>().at(fqn).as<StateDict>();
  }
  // A ShardedTensor holding the same pieces as the DTensor `d` (one shard per rank).
  ShardedTensor as_sharded(const DTensor& d, std::vector<std::int64_t> offsets,
                           std::vector<std::int64_t> sizes, at::Tensor local) {
    std::vector<LocalShard> shards;
    shards.push_back({std::move(local), {std::move(offsets), std::move(sizes), rank()}});
    return ShardedTensor::from_local_shards(shards, d.global_shape(), process_group());
  }

  std::unique_ptr<ct::DataParallelTrainer> local_;
  std::unique_ptr<ct::DataParallelTrainer> dist_;
  StateDict msd_, osd_, dist_msd_, dist_osd_;
};

// ---- correct implementations: no false alarms ---------------------------------------------------

TEST_F(Planted, CorrectFsdpModelAndOptimizer) {
  EXPECT_TRUE(verify_model());
  EXPECT_TRUE(verify_optimizer());
  auto fresh = ct::adam(1e-2)(local_->model());
  EXPECT_TRUE(verify_osd_by_load(local_->model(), local_->optimizer(), *fresh, dist_osd_));
}

TEST_F(Planted, CorrectDdpModelAndOptimizer) {
  train(ct::Parallelism::DDP);
  EXPECT_TRUE(verify_model());
  EXPECT_TRUE(verify_optimizer());
}

TEST_F(Planted, CorrectShardedTensorLayout) {
  const auto& d = dist_msd_.at("l.weight").as<DTensor>();
  dist_msd_.insert("l.weight", as_sharded(d, d.global_offset_of(rank()), d.local_shape_of(rank()),
                                          d.local()));
  EXPECT_TRUE(verify_model());
}

// ---- planted bugs: every one must fail, naming the key ------------------------------------------

// Each rank but the first records its shard one row too early (overlapping its neighbour).
TEST_F(Planted, OffByOneShardOffset) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  const auto& d = dist_msd_.at("u1.l1.weight").as<DTensor>();
  auto offsets = d.global_offset_of(rank());
  if (rank() > 0) offsets[0] -= 1;
  dist_msd_.insert("u1.l1.weight", as_sharded(d, offsets, d.local_shape_of(rank()), d.local()));
  EXPECT_TRUE(verify_model());
}

// Ranks 0 and 1 hold each other's rows.
TEST_F(Planted, ShardsSwappedBetweenTwoRanks) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  const auto& d = dist_msd_.at("u2.l1.weight").as<DTensor>();
  const at::Tensor full = d.full_tensor();
  const int other = rank() == 0 ? 1 : (rank() == 1 ? 0 : rank());
  const auto off = d.global_offset_of(other);
  dist_msd_.insert("u2.l1.weight",
                   with_local(d, full.narrow(0, off[0], d.local_shape_of(other)[0]).clone()));
  EXPECT_TRUE(verify_model());
}

// A hand-written sharder that drops the last row of the last (uneven) shard: 7 rows over the
// world, torch.chunk pieces.
TEST_F(Planted, LastUnevenShardTruncated) {
  const at::Tensor full = at::randn({7, 5});
  msd_.insert("head.weight", full);
  const auto e = c10dtest::chunk_extent(7, world_size(), rank());
  std::int64_t rows = e.length;
  const bool last = e.offset + e.length == 7 && e.length > 0;
  if (last) rows -= 1;
  std::vector<LocalShard> shards;
  shards.push_back({full.narrow(0, e.offset, rows).clone(), {{e.offset, 0}, {rows, 5}, rank()}});
  dist_msd_.insert("head.weight", ShardedTensor::from_local_shards(shards, {7, 5}, process_group()));
  EXPECT_TRUE(verify_model());
}

// The sharder takes a block of columns (dim 1) and stores it transposed as the Shard(0) rows.
TEST_F(Planted, ShardOnTheWrongDim) {
  const auto& d = dist_msd_.at("u2.l2.weight").as<DTensor>();
  const at::Tensor full = d.full_tensor();
  const auto off = d.global_offset_of(rank());
  const auto len = d.local_shape_of(rank())[0];
  dist_msd_.insert("u2.l2.weight", with_local(d, full.narrow(1, off[0], len).t().contiguous()));
  EXPECT_TRUE(verify_model());
}

// The optimizer state was saved one step before the model.
TEST_F(Planted, StaleOptimizerStep) {
  auto& s = state_of("u1.seq.1.weight");
  s.insert("step", s.at("step").as<std::int64_t>() - 1);
  EXPECT_TRUE(verify_optimizer());
}

// exp_avg of another parameter of the same shape.
TEST_F(Planted, ExpAvgOfTheWrongParameter) {
  const StateValue other = state_of("u1.l2.weight").at("exp_avg");
  state_of("u1.l1.weight").insert("exp_avg", other);
  EXPECT_TRUE(verify_optimizer());
}

// The second param group (tensor parallel, lr 0.2) saved with the first group's lr.
TEST_F(Planted, WrongLrInOneParamGroup) {
  auto make = [](torch::nn::Module& m) -> std::unique_ptr<torch::optim::Optimizer> {
    auto& mlp = dynamic_cast<ct::TpMlpImpl&>(m);
    auto opt = std::make_unique<torch::optim::Adam>(
        std::vector<at::Tensor>{mlp.fc->weight, mlp.fc->bias}, torch::optim::AdamOptions(0.05));
    opt->add_param_group(torch::optim::OptimizerParamGroup(
        std::vector<at::Tensor>{mlp.fc1->weight, mlp.fc1->bias},
        std::make_unique<torch::optim::AdamOptions>(0.2)));
    return opt;
  };
  at::manual_seed(4);
  ct::TensorParallelTrainer local(12, 10, 6, make, /*local=*/true);
  at::manual_seed(4);
  ct::TensorParallelTrainer tp(12, 10, 6, make, /*local=*/false);
  const at::Tensor x = at::rand({5, 12});
  local.step(x);
  tp.step(x);
  StateDict osd = tp.optimizer_state_dict();
  osd.at("param_groups").as<StateList>()[1].as<StateDict>().insert("lr", 0.05);
  EXPECT_TRUE(verify_osd(*local.model(), local.optimizer(), local.optimizer_state_dict(), osd));
}

// The saver drops frozen parameters although it was not asked to.
TEST_F(Planted, FrozenParameterMissing) {
  ct::ModelSpec spec = ct::composite_param_model_spec();
  const auto make = spec.make;
  spec.make = [make] {
    auto m = make();
    dynamic_cast<ct::CompositeParamModelImpl&>(*m).u2->l2->weight.requires_grad_(false);
    return m;
  };
  train(ct::Parallelism::FSDP, spec);
  StateDictOptions drop;
  drop.ignore_frozen_params = true;
  EXPECT_TRUE(verify_msd(local_->model(), dist_->model_state_dict(drop), {}));
}

// One value silently saved in bfloat16.
TEST_F(Planted, DtypeSilentlyDowncast) {
  const auto& d = dist_msd_.at("u1.seq.1.bias").as<DTensor>();
  dist_msd_.insert("u1.seq.1.bias", with_local(d, d.local().to(at::kBFloat16)));
  EXPECT_TRUE(verify_model());
}

// The buffer is not saved.
TEST_F(Planted, BufferNotSaved) {
  dist_msd_.erase("buffer");
  EXPECT_TRUE(verify_model());
}

// A key saved under another name.
TEST_F(Planted, KeyRenamed) {
  dist_msd_.rename("u2.seq.1.weight", "u2.seq.1.w");
  EXPECT_TRUE(verify_model());
}

// The last rank's shard of p is zeroed.
TEST_F(Planted, OneRanksShardZeroed) {
  const auto& d = dist_msd_.at("p").as<DTensor>();
  if (rank() == world_size() - 1) dist_msd_.insert("p", with_local(d, at::zeros_like(d.local())));
  EXPECT_TRUE(verify_model());
}

// DDP: one rank's replica drifted.
TEST_F(Planted, ReplicaDiverged) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  train(ct::Parallelism::DDP);
  const auto& d = dist_msd_.at("l.bias").as<DTensor>();
  if (rank() == 1) dist_msd_.insert("l.bias", with_local(d, d.local() + 1e-3));
  EXPECT_TRUE(verify_model());
}

// exp_avg_sq pieces rotated between ranks (each rank saved its neighbour's).
TEST_F(Planted, OptimizerStateOfTheNeighboursShard) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  auto& v = state_of("l.weight").at("exp_avg_sq");
  const auto& d = v.as<DTensor>();
  const at::Tensor full = d.full_tensor();
  const int next = (rank() + 1) % world_size();
  v = with_local(d, full.narrow(0, d.global_offset_of(next)[0], d.local_shape_of(next)[0]).clone());
  EXPECT_TRUE(verify_optimizer());
}

}  // namespace
