// The scenarios of PyTorch's test/distributed/checkpoint/test_state_dict.py in C++: a local model
// and a sharded one trained on the same data, then verified with VerifyStateDictMixin, reloaded
// into a fresh sharded model and verified again. Every scenario runs with the shard-local
// strategy and with the gather strategy (reference on rank 0 only where the API allows it).
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/testing/modules.hpp>
#include <c10dtest/testing/trainers.hpp>
#include <c10dtest/verify.hpp>
#include <gmock/gmock.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <tuple>

namespace {

namespace ct = c10dtest::testing;
using c10dtest::DTensor;
using c10dtest::StateDict;
using c10dtest::StateDictOptions;
using c10dtest::StateList;
using c10dtest::VerifyOptions;
using c10dtest::VerifyStrategy;
using ::testing::HasSubstr;

struct Mode {
  const char* name;
  VerifyStrategy strategy;
  bool reference_on_rank0_only;
};
const Mode kShardLocal{"ShardLocal", VerifyStrategy::kShardLocal, false};
const Mode kGatherToRank0{"GatherToRank0", VerifyStrategy::kGather, true};
void PrintTo(const Mode& m, std::ostream* os) { *os << m.name; }

constexpr int kSteps = 3;

// The scenario fixture: `mode()` says how verifications run.
template <typename Param>
class ScenarioTest : public c10dtest::DistributedTestWithParam<Param>,
                     public c10dtest::VerifyStateDictMixin {
 protected:
  virtual const Mode& mode() const = 0;
  // The reference as this rank passes it: empty off rank 0 in the gather mode.
  StateDict ref(const StateDict& sd) const {
    return mode().reference_on_rank0_only && this->rank() != 0 ? StateDict() : sd;
  }
  VerifyOptions options() const {
    VerifyOptions o;
    o.strategy = mode().strategy;
    return o;
  }
  // A batch that is the same on every rank (every rank's generator was seeded alike).
  static at::Tensor batch() { return at::rand({8, 100}); }
};

// ---- data parallel: DDP, FSDP, HSDP x SGD, Adam, AdamW ------------------------------------------

struct DpCase {
  const char* name;
  ct::Parallelism kind;
  ct::OptimizerFactory (*make)();
};
void PrintTo(const DpCase& c, std::ostream* os) { *os << c.name; }

ct::OptimizerFactory make_sgd() { return ct::sgd(1e-4); }
ct::OptimizerFactory make_adam() { return ct::adam(1e-3); }
ct::OptimizerFactory make_adamw() { return ct::adamw(1e-3); }

class DataParallelScenario : public ScenarioTest<std::tuple<Mode, DpCase>> {
 protected:
  const Mode& mode() const override { return std::get<0>(GetParam()); }
  const DpCase& dp() const { return std::get<1>(GetParam()); }
};

// PyTorch's _test_save_load: train, verify model and optimizer state, load into a fresh sharded
// model, verify again, then train both on and verify once more.
TEST_P(DataParallelScenario, SaveVerifyLoadVerify) {
  if (dp().kind == ct::Parallelism::HSDP && world_size() % 2 != 0) {
    GTEST_SKIP() << "HSDP needs an even world size";
  }
  at::manual_seed(11);
  ct::DataParallelTrainer local(ct::composite_param_model_spec(), ct::Parallelism::Local,
                                dp().make());
  at::manual_seed(11);
  ct::DataParallelTrainer dist(ct::composite_param_model_spec(), dp().kind, dp().make(),
                                this->device());
  for (int i = 0; i < kSteps; ++i) {
    const at::Tensor x = batch();
    local.step(x);
    dist.step(x);
  }
  const StateDict msd = local.model_state_dict();
  const StateDict osd = local.optimizer_state_dict();
  const StateDict dist_msd = dist.model_state_dict();
  const StateDict dist_osd = dist.optimizer_state_dict();
  ASSERT_TRUE(dist_msd.at("u1.l1.weight").is<DTensor>());
  EXPECT_TRUE(verify_msd(ref(msd), dist_msd, options()));
  EXPECT_TRUE(verify_osd(local.model(), local.optimizer(), ref(osd), dist_osd, options()));
  auto new_optim = dp().make()(local.model());
  EXPECT_TRUE(verify_osd_by_load(local.model(), local.optimizer(), *new_optim, dist_osd));
  EXPECT_TRUE(c10dtest::verify_state_dict(ref(c10dtest::flatten_optimizer_state_dict(osd)),
                                          c10dtest::flatten_optimizer_state_dict(dist_osd),
                                          options()));

  at::manual_seed(99);  // a fresh model that starts elsewhere
  ct::DataParallelTrainer fresh(ct::composite_param_model_spec(), dp().kind, dp().make(),
                                this->device());
  EXPECT_FALSE(verify_msd(ref(msd), fresh.model_state_dict(), options()));
  fresh.load_model_state_dict(dist_msd);
  fresh.load_optimizer_state_dict(dist_osd);
  EXPECT_TRUE(verify_msd(ref(msd), fresh.model_state_dict(), options()));
  EXPECT_TRUE(verify_osd(local.model(), local.optimizer(), ref(osd),
                         fresh.optimizer_state_dict(), options()));
  const at::Tensor x = batch();
  local.step(x);
  fresh.step(x);
  EXPECT_TRUE(verify_msd(ref(local.model_state_dict()), fresh.model_state_dict(), options()));
  EXPECT_TRUE(verify_osd(local.model(), local.optimizer(), ref(local.optimizer_state_dict()),
                         fresh.optimizer_state_dict(), options()));
}

INSTANTIATE_TEST_SUITE_P(
    TestStateDict, DataParallelScenario,
    ::testing::Combine(::testing::Values(kShardLocal, kGatherToRank0),
                       ::testing::Values(DpCase{"DDP_SGD", ct::Parallelism::DDP, make_sgd},
                                         DpCase{"DDP_Adam", ct::Parallelism::DDP, make_adam},
                                         DpCase{"DDP_AdamW", ct::Parallelism::DDP, make_adamw},
                                         DpCase{"FSDP_SGD", ct::Parallelism::FSDP, make_sgd},
                                         DpCase{"FSDP_Adam", ct::Parallelism::FSDP, make_adam},
                                         DpCase{"FSDP_AdamW", ct::Parallelism::FSDP, make_adamw},
                                         DpCase{"HSDP_Adam", ct::Parallelism::HSDP, make_adam})),
    [](const auto& info) {
      return std::string(std::get<0>(info.param).name) + "_" + std::get<1>(info.param).name;
    });

// ---- the other scenarios, each under both modes -------------------------------------------------

class Scenario : public ScenarioTest<Mode> {
 protected:
  const Mode& mode() const override { return GetParam(); }

  // Local (on CPU) and FSDP (on the test's device()) trainers of `spec`, trained kSteps on
  // `input()`.
  template <typename Input>
  std::pair<ct::DataParallelTrainer, ct::DataParallelTrainer> trained(
      const ct::ModelSpec& spec, ct::Parallelism kind, Input&& input) {
    at::manual_seed(5);
    ct::DataParallelTrainer local(spec, ct::Parallelism::Local, ct::adam(1e-2));
    at::manual_seed(5);
    ct::DataParallelTrainer dist(spec, kind, ct::adam(1e-2), this->device());
    for (int i = 0; i < kSteps; ++i) {
      const at::Tensor x = input();
      local.step(x);
      dist.step(x);
    }
    return {std::move(local), std::move(dist)};
  }
};

template <typename Optimizer, typename Options>
ct::OptimizerFactory tp_groups(Options first, Options second, bool empty_second) {
  return [=](torch::nn::Module& m) -> std::unique_ptr<torch::optim::Optimizer> {
    auto& mlp = dynamic_cast<ct::TpMlpImpl&>(m);
    std::vector<at::Tensor> all{mlp.fc->weight, mlp.fc->bias};
    std::vector<at::Tensor> rest{mlp.fc1->weight, mlp.fc1->bias};
    if (empty_second) all.insert(all.end(), rest.begin(), rest.end());
    auto opt = std::make_unique<Optimizer>(all, first);
    opt->add_param_group(torch::optim::OptimizerParamGroup(
        empty_second ? std::vector<at::Tensor>{} : rest, std::make_unique<Options>(second)));
    return opt;
  };
}

// test_multi_param_groups with tensor parallelism: fc colwise, fc1 rowwise; a second group with
// lr 0.2, or one group and an empty one.
TEST_P(Scenario, TensorParallelWithTwoParamGroupsAndWithAnEmptyGroup) {
  for (const bool empty_second : {false, true}) {
    SCOPED_TRACE(empty_second ? "one group and an empty one" : "two groups");
    const auto make = tp_groups<torch::optim::AdamW>(torch::optim::AdamWOptions(0.05),
                                                     torch::optim::AdamWOptions(0.2),
                                                     empty_second);
    at::manual_seed(3);
    ct::TensorParallelTrainer local(12, 10, 6, make, /*local=*/true);
    at::manual_seed(3);
    ct::TensorParallelTrainer tp(12, 10, 6, make, /*local=*/false);
    for (int i = 0; i < kSteps; ++i) {
      const at::Tensor x = at::rand({5, 12});
      local.step(x);
      tp.step(x);
    }
    const StateDict osd = local.optimizer_state_dict();
    const StateDict dist_osd = tp.optimizer_state_dict();
    const auto& groups = dist_osd.at("param_groups").as<StateList>();
    ASSERT_EQ(groups.size(), 2u);
    EXPECT_EQ(groups[1].as<StateDict>().at("lr").as<double>(), 0.2);
    EXPECT_EQ(groups[1].as<StateDict>().at("params").as<StateList>().size(),
              empty_second ? 0u : 2u);
    EXPECT_TRUE(verify_msd(ref(local.model_state_dict()), tp.model_state_dict(), options()));
    EXPECT_TRUE(verify_osd(*local.model(), local.optimizer(), ref(osd), dist_osd, options()));
    auto new_optim = make(*local.model());
    EXPECT_TRUE(verify_osd_by_load(*local.model(), local.optimizer(), *new_optim, dist_osd));

    at::manual_seed(42);
    ct::TensorParallelTrainer fresh(12, 10, 6, make, /*local=*/false);
    fresh.load_model_state_dict(tp.model_state_dict());
    fresh.load_optimizer_state_dict(dist_osd);
    EXPECT_TRUE(verify_msd(ref(local.model_state_dict()), fresh.model_state_dict(), options()));
    EXPECT_TRUE(verify_osd(*local.model(), local.optimizer(), ref(osd),
                           fresh.optimizer_state_dict(), options()));
  }
}

// test_strict: an unexpected key, a missing key, and non-strict loading returning both.
TEST_P(Scenario, StrictLoading) {
  auto [local, dist] = trained(ct::composite_param_model_spec(), ct::Parallelism::FSDP, batch);
  StateDict sd = dist.model_state_dict();
  sd.insert("abc", at::zeros({2}));
  try {
    dist.load_model_state_dict(sd);
    ADD_FAILURE() << "an unexpected key loaded strictly";
  } catch (const c10dtest::StateDictError& e) {
    EXPECT_THAT(e.what(), HasSubstr("Unexpected key(s) in state_dict: \"abc\""));
  }
  sd.erase("abc");
  sd.erase("u1.l1.weight");
  try {
    dist.load_model_state_dict(sd);
    ADD_FAILURE() << "a missing key loaded strictly";
  } catch (const c10dtest::StateDictError& e) {
    EXPECT_THAT(e.what(), HasSubstr("Missing key(s) in state_dict: \"u1.l1.weight\""));
  }
  sd.insert("abc", at::zeros({2}));
  StateDictOptions lax;
  lax.strict = false;
  const auto result = dist.load_model_state_dict(sd, lax);
  EXPECT_EQ(result.missing_keys, std::vector<std::string>{"u1.l1.weight"});
  EXPECT_EQ(result.unexpected_keys, std::vector<std::string>{"abc"});
  // What did load still matches the local model.
  EXPECT_TRUE(verify_msd(ref(local.model_state_dict()), dist.model_state_dict(), options()));
}

// test_cpu_offload_full_state_dict: rank 0 holds every value, full and on CPU; the others none.
TEST_P(Scenario, CpuOffloadWithFullStateDict) {
  auto [local, dist] = trained(ct::composite_param_model_spec(), ct::Parallelism::FSDP, batch);
  StateDictOptions full;
  full.full_state_dict = true;
  full.cpu_offload = true;
  const StateDict msd = dist.model_state_dict(full);
  const StateDict osd = dist.optimizer_state_dict(full);
  if (rank() == 0) {
    ASSERT_EQ(msd.size(), 16u);
    for (std::size_t i = 0; i < msd.size(); ++i) {
      ASSERT_TRUE(msd.value(i).is<at::Tensor>()) << msd.keys()[i];
      EXPECT_TRUE(msd.value(i).as<at::Tensor>().device().is_cpu()) << msd.keys()[i];
    }
  } else {
    EXPECT_TRUE(msd.empty());
    EXPECT_TRUE(osd.empty());
  }
  // Without cpu_offload, every rank gets the full values where the shards live.
  full.cpu_offload = false;
  const StateDict on_device = dist.model_state_dict(full);
  ASSERT_EQ(on_device.size(), 16u);
  for (std::size_t i = 0; i < on_device.size(); ++i) {
    ASSERT_TRUE(on_device.value(i).is<at::Tensor>()) << on_device.keys()[i];
    EXPECT_EQ(on_device.value(i).as<at::Tensor>().device(), device()) << on_device.keys()[i];
  }
  VerifyOptions o = options();
  o.ranks = std::vector<int>{0};
  EXPECT_TRUE(verify_msd(ref(local.model_state_dict()), msd, o));
  EXPECT_TRUE(verify_osd(local.model(), local.optimizer(), ref(local.optimizer_state_dict()), osd,
                         o));
  if (world_size() > 1) {
    // Without `ranks`, the empty dicts of the other ranks are missing every key.
    const auto r = verify_msd(ref(local.model_state_dict()), msd, options());
    ASSERT_FALSE(r);
    EXPECT_THAT(r.message(), HasSubstr("16 of 16 keys differ (16 missing)"));
  }
}

// test_frozen_parameters: with ignore_frozen_params the frozen ones are left out; the values of
// what is there are still compared.
TEST_P(Scenario, FrozenParametersWithIgnoreFrozenParams) {
  ct::ModelSpec spec = ct::composite_param_model_spec();
  const auto make = spec.make;
  spec.make = [make] {
    auto m = make();
    for (auto& p : dynamic_cast<ct::CompositeParamModelImpl&>(*m).u1->parameters()) {
      p.requires_grad_(false);
    }
    return m;
  };
  auto [local, dist] = trained(spec, ct::Parallelism::FSDP, batch);
  StateDictOptions ignore;
  ignore.ignore_frozen_params = true;
  const StateDict dist_msd = dist.model_state_dict(ignore);
  EXPECT_FALSE(dist_msd.contains("u1.l1.weight"));
  EXPECT_TRUE(dist_msd.contains("u2.l1.weight"));
  VerifyOptions o = options();
  o.ignore_frozen_params = true;
  EXPECT_TRUE(verify_msd(local.model(), dist_msd, o));
  const auto strict = verify_msd(local.model(), dist_msd, options());
  ASSERT_FALSE(strict);
  EXPECT_THAT(strict.message(), HasSubstr("(6 missing)"));
  EXPECT_THAT(strict.message(), HasSubstr("'u1.l1.weight'"));
  EXPECT_TRUE(verify_osd(local.model(), local.optimizer(), ref(local.optimizer_state_dict()),
                         dist.optimizer_state_dict(), options()));
}

// test_shared_weight: a tied embedding and LM head, sharded once, saved under both names.
TEST_P(Scenario, TiedWeights) {
  auto ids = [] { return at::randint(0, 16, {4, 5}, at::kLong); };
  auto [local, dist] = trained(ct::tied_embedding_model_spec(16, 8), ct::Parallelism::FSDP, ids);
  const StateDict dist_msd = dist.model_state_dict();
  ASSERT_TRUE(dist_msd.contains("embedding.weight"));
  ASSERT_TRUE(dist_msd.contains("lm_head.weight"));
  EXPECT_TRUE(verify_msd(ref(local.model_state_dict()), dist_msd, options()));
  EXPECT_TRUE(verify_osd(local.model(), local.optimizer(), ref(local.optimizer_state_dict()),
                         dist.optimizer_state_dict(), options()));
}

// test_state_dict_with_hook_on_keys: FusionEmbeddingWithModifier saves "weight" (a hook renames
// embedding.weight) and loads it back through its FQN modifier; a plain FusionEmbedding cannot.
TEST_P(Scenario, FusionEmbeddingHookAndModifierKeys) {
  ct::ModelSpec spec;
  spec.make = [] { return ct::FusionEmbeddingWithModifier(4, 4, 4).ptr(); };
  spec.forward = [](torch::nn::Module& m, const at::Tensor& ids) {
    auto& f = dynamic_cast<ct::FusionEmbeddingImpl&>(m);
    return f.embedding->forward(ids).sum() + f.fusion_embedding->forward(ids).sum() * 2;
  };
  auto input = [] { return at::randint(0, 4, {8, 3}, at::kLong); };
  auto [local, dist] = trained(spec, ct::Parallelism::FSDP, input);
  const StateDict dist_msd = dist.model_state_dict();
  EXPECT_EQ(dist_msd.keys(), (std::vector<std::string>{"weight", "fusion_embedding.weight"}));
  EXPECT_TRUE(verify_msd(ref(local.model_state_dict()), dist_msd, options()));
  EXPECT_TRUE(verify_osd(local.model(), local.optimizer(), ref(local.optimizer_state_dict()),
                         dist.optimizer_state_dict(), options()));
  const StateDict full = c10dtest::gather_state_dict(dist_msd);
  ct::FusionEmbedding plain(4, 4, 4);
  EXPECT_THROW(c10dtest::set_model_state_dict(*plain, full), c10dtest::StateDictError);
  ct::FusionEmbeddingWithModifier modified(4, 4, 4);
  c10dtest::set_model_state_dict(*modified, full);
  EXPECT_TRUE(verify_msd(ref(local.model_state_dict()), c10dtest::get_model_state_dict(*modified),
                         options()));
}

// test_broadcast_from_rank0: rank 0 alone holds the full dicts; a fresh FSDP model loads them.
TEST_P(Scenario, BroadcastFromRank0) {
  auto [local, dist] = trained(ct::composite_param_model_spec(), ct::Parallelism::FSDP, batch);
  at::manual_seed(77);
  ct::DataParallelTrainer fresh(ct::composite_param_model_spec(), ct::Parallelism::FSDP,
                                ct::adam(1e-2));
  StateDictOptions from0;
  from0.full_state_dict = true;
  from0.broadcast_from_rank0 = true;
  fresh.load_model_state_dict(rank() == 0 ? local.model_state_dict() : StateDict(), from0);
  EXPECT_TRUE(verify_msd(ref(local.model_state_dict()), fresh.model_state_dict(), options()));
}

INSTANTIATE_TEST_SUITE_P(TestStateDict, Scenario, ::testing::Values(kShardLocal, kGatherToRank0),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
