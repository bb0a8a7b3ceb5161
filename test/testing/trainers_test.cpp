// The reference trainers: DDP, FSDP, HSDP and tensor-parallel training match local training on
// the same batches (gathered model and optimizer state), with the expected DTensor layouts, at 1,
// 2 and 4 ranks.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/compare.hpp>
#include <c10dtest/distributed_state_dict.hpp>
#include <c10dtest/testing/modules.hpp>
#include <c10dtest/testing/trainers.hpp>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <functional>
#include <map>
#include <ostream>

namespace {

using c10dtest::DTensor;
using c10dtest::Placement;
using c10dtest::Replicate;
using c10dtest::Shard;
using c10dtest::StateDict;
using c10dtest::StateList;
using c10dtest::StateValue;
namespace ct = c10dtest::testing;
namespace optim = torch::optim;
using ct::Parallelism;

constexpr std::int64_t kModelSeed = 1234;
constexpr std::int64_t kDataSeed = 5678;
constexpr int kSteps = 3;

struct OptimizerCase {
  const char* name;
  std::function<ct::OptimizerFactory()> make;
};

const std::vector<OptimizerCase>& optimizer_cases() {
  static const std::vector<OptimizerCase> cases{
      {"SGD", [] { return ct::sgd(1e-3); }},
      {"Adam", [] { return ct::adam(1e-3); }},
      {"AdamW", [] { return ct::adamw(1e-3); }},
  };
  return cases;
}

// Walks `expected` (a plain state dict) and `actual` (a gathered one) side by side: the same keys
// in the same order, tensors close (compare_tensors' default tolerances), other values equal.
// Returns the number of tensors compared.
int expect_same_tree(const StateValue& expected, const StateValue& actual, const std::string& path) {
  if (expected.is<StateDict>()) {
    if (!actual.is<StateDict>()) {
      ADD_FAILURE() << path << ": expected a dict, got " << actual.type_name();
      return 0;
    }
    const auto& e = expected.as<StateDict>();
    const auto& a = actual.as<StateDict>();
    EXPECT_EQ(e.keys(), a.keys()) << path;
    int n = 0;
    for (std::size_t i = 0; i < e.size(); ++i) {
      const std::string& key = e.keys()[i];
      if (!a.contains(key)) continue;
      n += expect_same_tree(e.value(i), a.at(key), path.empty() ? key : path + "." + key);
    }
    return n;
  }
  if (expected.is<StateList>()) {
    if (!actual.is<StateList>() ||
        actual.as<StateList>().size() != expected.as<StateList>().size()) {
      ADD_FAILURE() << path << ": expected a list of " << expected.as<StateList>().size()
                    << ", got " << actual.summary();
      return 0;
    }
    int n = 0;
    for (std::size_t i = 0; i < expected.as<StateList>().size(); ++i) {
      n += expect_same_tree(expected.as<StateList>()[i], actual.as<StateList>()[i],
                            path + "." + std::to_string(i));
    }
    return n;
  }
  if (expected.is<at::Tensor>()) {
    if (!actual.is<at::Tensor>()) {
      ADD_FAILURE() << path << ": expected a Tensor, got " << actual.type_name();
      return 0;
    }
    EXPECT_TRUE(c10dtest::compare_tensors(expected.as<at::Tensor>(), actual.as<at::Tensor>(), {},
                                          {path, -1, {}}));
    return 1;
  }
  EXPECT_EQ(expected.summary(), actual.summary()) << path;
  return 0;
}

// Placements that the tensors of `fqn` must have.
using PlacementsOf = std::function<std::vector<Placement>(const std::string& fqn)>;

// Every parameter of the (not gathered) model state dict is a DTensor with placements_of(key);
// keys in `plain` are plain tensors. Every tensor of the optimizer state is a DTensor laid out
// like its parameter. Returns the number of DTensors checked.
int expect_layouts(const StateDict& model_sd, const StateDict& optim_sd,
                   const PlacementsOf& placements_of, const std::vector<std::string>& plain = {}) {
  int n = 0;
  for (std::size_t i = 0; i < model_sd.size(); ++i) {
    const std::string& key = model_sd.keys()[i];
    const StateValue& v = model_sd.value(i);
    if (std::find(plain.begin(), plain.end(), key) != plain.end()) {
      EXPECT_TRUE(v.is<at::Tensor>()) << key << ": " << v.summary();
      continue;
    }
    if (!v.is<DTensor>()) {
      ADD_FAILURE() << key << " is not a DTensor: " << v.summary();
      continue;
    }
    EXPECT_EQ(c10dtest::to_string(v.as<DTensor>().placements()),
              c10dtest::to_string(placements_of(key)))
        << key;
    ++n;
  }
  const auto& state = optim_sd.at("state").as<StateDict>();
  for (std::size_t i = 0; i < state.size(); ++i) {
    const std::string& fqn = state.keys()[i];
    const auto& fields = state.value(i).as<StateDict>();
    for (std::size_t k = 0; k < fields.size(); ++k) {
      const StateValue& v = fields.value(k);
      const std::string where = fqn + "." + fields.keys()[k];
      if (fields.keys()[k] == "step") {
        EXPECT_EQ(v.as<std::int64_t>(), kSteps) << where;
        continue;
      }
      if (!v.is<DTensor>()) {
        ADD_FAILURE() << where << " is not a DTensor: " << v.summary();
        continue;
      }
      EXPECT_EQ(c10dtest::to_string(v.as<DTensor>().placements()),
                c10dtest::to_string(placements_of(fqn)))
          << where;
      ++n;
    }
  }
  return n;
}

// Trains `reference` and `parallel` side by side on the same batches, then compares the gathered
// model and optimizer state of `parallel` with the reference's. Returns the number of tensors
// compared.
template <typename Trainer>
int train_and_compare(Trainer& reference, Trainer& parallel,
                      const std::function<at::Tensor()>& make_batch) {
  const StateDict initial = reference.model_state_dict();
  std::map<std::string, at::Tensor> before;
  for (std::size_t i = 0; i < initial.size(); ++i) {
    before[initial.keys()[i]] = initial.value(i).as<at::Tensor>().clone();
  }
  at::manual_seed(kDataSeed);
  for (int s = 0; s < kSteps; ++s) {
    const at::Tensor batch = make_batch();
    reference.step(batch);
    parallel.step(batch);
  }
  const StateDict ref_model = reference.model_state_dict();
  const StateDict ref_optim = reference.optimizer_state_dict();
  // Training moved the parameters, so agreeing below is not agreeing on the initial values.
  int moved = 0;
  for (const auto& entry : before) {
    if (!at::equal(entry.second, ref_model.at(entry.first).as<at::Tensor>())) ++moved;
  }
  EXPECT_GT(moved, 0) << "no parameter changed in " << kSteps << " steps";
  EXPECT_FALSE(ref_optim.at("state").as<StateDict>().empty()) << ref_optim.describe();

  const StateDict got_model = c10dtest::gather_state_dict(parallel.model_state_dict());
  const StateDict got_optim = c10dtest::gather_state_dict(parallel.optimizer_state_dict());
  return expect_same_tree(ref_model, got_model, "model") +
         expect_same_tree(ref_optim, got_optim, "optim");
}

std::vector<Placement> dp_placements(Parallelism kind) {
  switch (kind) {
    case Parallelism::DDP: return {Replicate{}};
    case Parallelism::FSDP: return {Shard{0}};
    case Parallelism::HSDP: return {Replicate{}, Shard{0}};
    case Parallelism::Local: break;
  }
  return {};
}

// Whether `kind` can run on this world (HSDP needs an even world size).
bool fits_world(Parallelism kind, int world_size) {
  return kind != Parallelism::HSDP || world_size % 2 == 0;
}

struct DpCase {
  Parallelism kind;
  OptimizerCase opt;
};

void PrintTo(const DpCase& c, std::ostream* os) { *os << ct::to_string(c.kind) << "/" << c.opt.name; }

std::vector<DpCase> dp_cases() {
  std::vector<DpCase> out;
  for (auto kind : {Parallelism::DDP, Parallelism::FSDP, Parallelism::HSDP}) {
    for (const auto& opt : optimizer_cases()) out.push_back({kind, opt});
  }
  return out;
}

class DataParallel : public c10dtest::DistributedTestWithParam<DpCase> {};

TEST_P(DataParallel, MatchesLocalTrainingAfterThreeSteps) {
  const Parallelism kind = GetParam().kind;
  const OptimizerCase& opt = GetParam().opt;
  if (!fits_world(kind, world_size())) {
    GTEST_SKIP() << ct::to_string(kind) << " needs an even world size, have " << world_size();
  }
  at::manual_seed(kModelSeed);
  ct::DataParallelTrainer reference(ct::composite_param_model_spec(), Parallelism::Local,
                                    opt.make());
  at::manual_seed(kModelSeed);
  ct::DataParallelTrainer parallel(ct::composite_param_model_spec(), kind, opt.make());
  EXPECT_TRUE(reference.layouts().empty());
  EXPECT_EQ(parallel.layouts().size(), 15u);

  // 7 rows: uneven pieces at 2 and 4 ranks.
  const int compared =
      train_and_compare(reference, parallel, [] { return at::rand({7, 100}); });
  // 16 model entries, 15 parameters' state (1 tensor for SGD, 2 for Adam and AdamW).
  const int per_param = std::string(opt.name) == "SGD" ? 1 : 2;
  EXPECT_EQ(compared, 16 + 15 * per_param);

  const auto placements = dp_placements(kind);
  EXPECT_EQ(expect_layouts(parallel.model_state_dict(), parallel.optimizer_state_dict(),
                           [&](const std::string&) { return placements; }, {"buffer"}),
            15 + 15 * per_param);
  if (kind != Parallelism::DDP) {
    // The parameter holds this rank's rows: torch.chunk of 100 over the shard dim.
    const auto& mesh = *parallel.mesh();
    const auto coord = mesh.coordinate_of(rank());
    const auto rows = c10dtest::chunk_extent(100, mesh.size(mesh.ndim() - 1), coord.back());
    auto& model = dynamic_cast<ct::CompositeParamModelImpl&>(parallel.model());
    EXPECT_EQ(model.l->weight.sizes(), (at::IntArrayRef{rows.length, 100}));
    EXPECT_EQ(model.p.sizes(), (at::IntArrayRef{rows.length, 100}));
    EXPECT_EQ(model.buffer.sizes(), (at::IntArrayRef{100, 100}));
  }
}

INSTANTIATE_TEST_SUITE_P(Trainers, DataParallel, ::testing::ValuesIn(dp_cases()),
                         [](const ::testing::TestParamInfo<DpCase>& info) {
                           return std::string(ct::to_string(info.param.kind)) + "_" +
                                  info.param.opt.name;
                         });

class Trainers : public c10dtest::DistributedTest {};

TEST_F(Trainers, TiedEmbeddingTrainsIdenticallyUnderFsdp) {
  constexpr std::int64_t kVocab = 11;
  at::manual_seed(kModelSeed);
  ct::DataParallelTrainer reference(ct::tied_embedding_model_spec(kVocab, 6), Parallelism::Local,
                                    ct::adam(1e-2));
  at::manual_seed(kModelSeed);
  ct::DataParallelTrainer fsdp(ct::tied_embedding_model_spec(kVocab, 6), Parallelism::FSDP,
                               ct::adam(1e-2));
  // One tensor under two names, sharded once: the optimizer holds it once.
  auto& model = dynamic_cast<ct::TiedEmbeddingModelImpl&>(fsdp.model());
  EXPECT_TRUE(model.lm_head->weight.is_same(model.embedding->weight));
  EXPECT_EQ(fsdp.optimizer().param_groups()[0].params().size(), 1u);
  const auto rows = c10dtest::chunk_extent(kVocab, world_size(), rank());
  EXPECT_EQ(model.embedding->weight.sizes(), (at::IntArrayRef{rows.length, 6}));
  ASSERT_EQ(fsdp.layouts().size(), 2u);
  EXPECT_EQ(fsdp.layouts().at("lm_head.weight").global_shape,
            (std::vector<std::int64_t>{kVocab, 6}));

  // 3 rows: at 4 ranks the last one gets none.
  const int compared = train_and_compare(reference, fsdp, [] {
    return at::randint(kVocab, {3, 5}, at::TensorOptions().dtype(at::kLong));
  });
  EXPECT_EQ(compared, 2 + 2);  // both names of the weight; exp_avg and exp_avg_sq once
  EXPECT_EQ(expect_layouts(fsdp.model_state_dict(), fsdp.optimizer_state_dict(),
                           [](const std::string&) { return std::vector<Placement>{Shard{0}}; }),
            2 + 2);
}

TEST_F(Trainers, FrozenParametersAreNeitherReducedNorStepped) {
  // u1.l1.weight and p frozen before sharding.
  auto spec = ct::composite_param_model_spec();
  spec.make = [make = spec.make] {
    auto m = make();
    auto& model = dynamic_cast<ct::CompositeParamModelImpl&>(*m);
    model.u1->l1->weight.set_requires_grad(false);
    model.p.set_requires_grad(false);
    return m;
  };
  at::manual_seed(kModelSeed);
  ct::DataParallelTrainer reference(spec, Parallelism::Local, ct::adamw(1e-3));
  at::manual_seed(kModelSeed);
  ct::DataParallelTrainer fsdp(spec, Parallelism::FSDP, ct::adamw(1e-3));
  const StateDict initial = c10dtest::gather_state_dict(fsdp.model_state_dict());

  const int compared = train_and_compare(reference, fsdp, [] { return at::rand({7, 100}); });
  EXPECT_EQ(compared, 16 + 13 * 2);

  auto& model = dynamic_cast<ct::CompositeParamModelImpl&>(fsdp.model());
  EXPECT_FALSE(model.u1->l1->weight.requires_grad());
  EXPECT_FALSE(model.p.requires_grad());
  EXPECT_TRUE(model.u1->l2->weight.requires_grad());
  EXPECT_FALSE(model.p.grad().defined());
  const StateDict after = c10dtest::gather_state_dict(fsdp.model_state_dict());
  for (const char* frozen : {"u1.l1.weight", "p"}) {
    EXPECT_TRUE(at::equal(initial.at(frozen).as<at::Tensor>(), after.at(frozen).as<at::Tensor>()))
        << frozen;
  }
  EXPECT_FALSE(at::equal(initial.at("u1.l2.weight").as<at::Tensor>(),
                         after.at("u1.l2.weight").as<at::Tensor>()));
  const StateDict osd = fsdp.optimizer_state_dict();
  const auto& state = osd.at("state").as<StateDict>();
  EXPECT_FALSE(state.contains("u1.l1.weight"));
  EXPECT_FALSE(state.contains("p"));
  EXPECT_EQ(state.size(), 13u);
}

TEST_F(Trainers, ParametersNoRankUsesGetNoGradientAndNoState) {
  // forward skips u2 and p: the reference gives them no gradient, so neither may FSDP (AdamW would
  // otherwise decay them and create their state).
  auto spec = ct::composite_param_model_spec();
  spec.forward = [](torch::nn::Module& m, const at::Tensor& x) {
    auto& model = dynamic_cast<ct::CompositeParamModelImpl&>(m);
    return model.u1->forward(model.l->forward(x));
  };
  at::manual_seed(kModelSeed);
  ct::DataParallelTrainer reference(spec, Parallelism::Local, ct::adamw(1e-3, 0.1));
  at::manual_seed(kModelSeed);
  ct::DataParallelTrainer fsdp(spec, Parallelism::FSDP, ct::adamw(1e-3, 0.1));
  const int compared = train_and_compare(reference, fsdp, [] { return at::rand({7, 100}); });
  EXPECT_EQ(compared, 16 + 8 * 2);  // l and u1 have state, u2 and p none
  const StateDict osd = fsdp.optimizer_state_dict();
  EXPECT_EQ(osd.at("state").as<StateDict>().size(), 8u) << osd.describe();
  EXPECT_FALSE(dynamic_cast<ct::CompositeParamModelImpl&>(fsdp.model()).p.grad().defined());
}

TEST_F(Trainers, ShardedStateLoadsIntoAFreshTrainerThatTrainsOnIdentically) {
  at::manual_seed(kModelSeed);
  ct::DataParallelTrainer first(ct::composite_param_model_spec(), Parallelism::FSDP,
                                ct::adam(1e-3));
  at::manual_seed(kDataSeed);
  first.step(at::rand({5, 100}));
  at::manual_seed(kModelSeed + 1);  // other weights
  ct::DataParallelTrainer second(ct::composite_param_model_spec(), Parallelism::FSDP,
                                 ct::adam(0.5));
  const auto loaded = second.load_model_state_dict(first.model_state_dict());
  EXPECT_TRUE(loaded.missing_keys.empty());
  second.load_optimizer_state_dict(first.optimizer_state_dict());
  EXPECT_EQ(second.optimizer().param_groups()[0].options().get_lr(), 1e-3);
  const at::Tensor x = at::rand({5, 100});
  first.step(x);
  second.step(x);
  const StateDict a = c10dtest::gather_state_dict(first.model_state_dict());
  const StateDict b = c10dtest::gather_state_dict(second.model_state_dict());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::equal(a.value(i).as<at::Tensor>(), b.at(a.keys()[i]).as<at::Tensor>()))
        << a.keys()[i];
  }
}

TEST_F(Trainers, HsdpNeedsAnEvenWorldSize) {
  if (world_size() % 2 == 0) GTEST_SKIP() << "the world size is even";
  try {
    ct::DataParallelTrainer t(ct::composite_param_model_spec(), Parallelism::HSDP, ct::sgd(0.1));
    FAIL() << "expected a ConfigError";
  } catch (const c10dtest::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "DataParallelTrainer: HSDP needs an even world size for its (2, W/2) mesh, have " +
                  std::to_string(world_size()));
  }
}

// Tensor parallel, with two param groups: fc with `first`, fc1 with `second` (lr 0.2).
template <typename Optimizer, typename Options>
ct::OptimizerFactory two_groups(Options first, Options second) {
  return [first, second](torch::nn::Module& m) -> std::unique_ptr<optim::Optimizer> {
    auto& mlp = dynamic_cast<ct::TpMlpImpl&>(m);
    auto opt = std::make_unique<Optimizer>(std::vector<at::Tensor>{mlp.fc->weight, mlp.fc->bias},
                                           first);
    opt->add_param_group(
        optim::OptimizerParamGroup(std::vector<at::Tensor>{mlp.fc1->weight, mlp.fc1->bias},
                                   std::make_unique<Options>(second)));
    return opt;
  };
}

struct TpCase {
  const char* name;
  std::function<ct::OptimizerFactory()> make;
};

void PrintTo(const TpCase& c, std::ostream* os) { *os << c.name; }

class TensorParallel : public c10dtest::DistributedTestWithParam<TpCase> {};

TEST_P(TensorParallel, MatchesLocalTrainingAfterThreeSteps) {
  const TpCase& c = GetParam();
  // hidden 10: pieces 5/5 at 2 ranks, 3/3/3/1 at 4.
  constexpr std::int64_t kIn = 12, kHidden = 10, kOut = 6;
  at::manual_seed(kModelSeed);
  ct::TensorParallelTrainer reference(kIn, kHidden, kOut, c.make(), /*local=*/true);
  at::manual_seed(kModelSeed);
  ct::TensorParallelTrainer tp(kIn, kHidden, kOut, c.make(), /*local=*/false);
  EXPECT_TRUE(reference.local());
  EXPECT_FALSE(tp.local());
  const auto cols = c10dtest::chunk_extent(kHidden, world_size(), rank());
  EXPECT_EQ(tp.model()->fc->weight.sizes(), (at::IntArrayRef{cols.length, kIn}));
  EXPECT_EQ(tp.model()->fc1->weight.sizes(), (at::IntArrayRef{kOut, cols.length}));
  EXPECT_EQ(tp.model()->fc1->bias.sizes(), (at::IntArrayRef{kOut}));

  const int compared = train_and_compare(reference, tp, [] { return at::randn({5, kIn}); });
  const int per_param = std::string(c.name) == "SGD" ? 1 : 2;
  EXPECT_EQ(compared, 4 + 4 * per_param);

  const std::map<std::string, std::vector<Placement>> expected{
      {"fc.weight", {Shard{0}}},
      {"fc.bias", {Shard{0}}},
      {"fc1.weight", {Shard{1}}},
      {"fc1.bias", {Replicate{}}}};
  EXPECT_EQ(expect_layouts(tp.model_state_dict(), tp.optimizer_state_dict(),
                           [&](const std::string& fqn) { return expected.at(fqn); }),
            4 + 4 * per_param);
  const auto osd = tp.optimizer_state_dict();
  const auto& groups = osd.at("param_groups").as<StateList>();
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].as<StateDict>().at("lr").as<double>(), 0.05);
  EXPECT_EQ(groups[1].as<StateDict>().at("lr").as<double>(), 0.2);
}

INSTANTIATE_TEST_SUITE_P(
    Trainers, TensorParallel,
    ::testing::Values(
        TpCase{"SGD",
               [] {
                 return two_groups<optim::SGD>(optim::SGDOptions(0.05).momentum(0.9),
                                               optim::SGDOptions(0.2).momentum(0.9));
               }},
        TpCase{"Adam",
               [] {
                 return two_groups<optim::Adam>(optim::AdamOptions(0.05), optim::AdamOptions(0.2));
               }},
        TpCase{"AdamW",
               [] {
                 return two_groups<optim::AdamW>(optim::AdamWOptions(0.05),
                                                 optim::AdamWOptions(0.2));
               }}),
    [](const ::testing::TestParamInfo<TpCase>& info) { return std::string(info.param.name); });

}  // namespace
