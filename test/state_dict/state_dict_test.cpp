// State-dict tree, model state dicts (options, hooks, modifiers, strictness, tied weights,
// sharded layouts) and the reference modules, at 1, 2 and 4 ranks.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/model_state_dict.hpp>
#include <c10dtest/state_dict.hpp>
#include <c10dtest/testing/modules.hpp>

namespace {

using c10dtest::StateDict;
using c10dtest::StateDictError;
using c10dtest::StateDictOptions;
using c10dtest::StateList;
using c10dtest::StateValue;
namespace ct = c10dtest::testing;

// The message of the E that f throws, or "no error" (any other exception fails the test).
template <typename E = c10dtest::Error>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "no error";
}

TEST(StateDictTree, KeepsInsertionOrderAndReplacesInPlace) {
  StateDict sd;
  sd.insert("b", at::ones({2}));
  sd.insert("a", std::int64_t{3});
  sd.insert("c", "adam");
  sd.insert("b", 1.5);
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"b", "a", "c"}));
  EXPECT_EQ(sd.at("b").as<double>(), 1.5);
  EXPECT_EQ(sd.at("a").as<std::int64_t>(), 3);
  EXPECT_EQ(sd.at("c").as<std::string>(), "adam");
}

TEST(StateDictTree, RenameAndEraseKeepTheRestInOrder) {
  StateDict sd;
  for (const char* k : {"x", "y", "z"}) sd.insert(k, StateValue(true));
  sd.rename("y", "w");
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"x", "w", "z"}));
  EXPECT_TRUE(sd.erase("x"));
  EXPECT_FALSE(sd.erase("x"));
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"w", "z"}));
  EXPECT_TRUE(sd.at("z").as<bool>());
  EXPECT_EQ(error_of([&] { sd.rename("w", "z"); }), "cannot rename 'w' to 'z': it exists");
}

TEST(StateDictTree, MissingKeysAndWrongTypesAreNamed) {
  StateDict sd;
  sd.insert("l1.weight", at::ones({2}));
  EXPECT_EQ(error_of([&] { sd.at("l2.weight"); }),
            "no key 'l2.weight' in a state dict of 1 entries (l1.weight)");
  EXPECT_EQ(error_of([&] { sd.at("l1.weight").as<std::int64_t>(); }),
            "state value is Tensor, not int");
}

TEST(StateDictTree, DescribeShowsShapesNeverValues) {
  StateDict inner;
  inner.insert("step", std::int64_t{7});
  inner.insert("exp_avg", at::full({3, 2}, 12345.0));
  StateDict sd;
  sd.insert("state", inner);
  sd.insert("groups", StateList{StateValue(0.1), StateValue(c10dtest::StateNone{})});
  const std::string text = sd.describe();
  EXPECT_EQ(text,
            "state: dict(2)\n"
            "  step: 7\n"
            "  exp_avg: Tensor[3, 2] Float cpu\n"
            "groups: list(2)\n");
  EXPECT_EQ(text.find("12345"), std::string::npos);
  StateDict big;
  for (int i = 0; i < 10; ++i) big.insert("k" + std::to_string(i), i);
  EXPECT_NE(big.describe(3).find("... 7 more entries"), std::string::npos);
}

TEST(ReferenceModules, CompositeParamModelHasFifteenParametersAndABuffer) {
  ct::CompositeParamModel model;
  EXPECT_EQ(model->parameters().size(), 15u);
  const auto sd = c10dtest::get_model_state_dict(*model);
  EXPECT_EQ(sd.size(), 16u);
  EXPECT_EQ(sd.keys().front(), "p");  // the module's own entries come before its children's
  for (const char* k : {"l.weight", "u1.l1.weight", "u1.seq.1.weight", "u1.seq.1.bias",
                        "u2.l2.bias", "buffer"}) {
    EXPECT_TRUE(sd.contains(k)) << k << "\n" << sd.describe();
  }
  EXPECT_EQ(model->forward(at::rand({8, 100})).sizes(), (at::IntArrayRef{8, 100}));
}

TEST(ReferenceModules, HookKeysLoadIntoTheModifierModelButNotThePlainOne) {
  // As PyTorch's test_state_dict_with_hook_on_keys.
  ct::FusionEmbeddingWithHook hooked(4, 4, 4);
  const auto sd = c10dtest::get_model_state_dict(*hooked);
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"weight", "fusion_embedding.weight"}));

  ct::FusionEmbedding plain(4, 4, 4);
  EXPECT_EQ(error_of([&] { c10dtest::set_model_state_dict(*plain, sd); }),
            "Error(s) in loading state_dict: Missing key(s) in state_dict: \"embedding.weight\". "
            "Unexpected key(s) in state_dict: \"weight\".");

  ct::FusionEmbeddingWithModifier modified(4, 4, 4);
  const auto result = c10dtest::set_model_state_dict(*modified, sd);
  EXPECT_TRUE(result.missing_keys.empty());
  EXPECT_TRUE(result.unexpected_keys.empty());
  EXPECT_TRUE(at::equal(modified->embedding->weight, hooked->embedding->weight));
  EXPECT_TRUE(at::equal(modified->fusion_embedding->weight, hooked->fusion_embedding->weight));
}

TEST(ReferenceModules, FqnModifiersMapBothWays) {
  ct::FusionEmbeddingWithModifier modified(4, 4, 4);
  ct::FusionEmbedding plain(4, 4, 4);
  EXPECT_EQ(c10dtest::fqn_of(*modified, "embedding.weight"), "weight");
  EXPECT_EQ(c10dtest::fqn_of(*modified, "fusion_embedding.weight"), "fusion_embedding.weight");
  EXPECT_EQ(c10dtest::path_of(*modified, "weight"), "embedding.weight");
  EXPECT_EQ(c10dtest::fqn_of(*plain, "embedding.weight"), "embedding.weight");
  EXPECT_EQ(c10dtest::path_of(*plain, "weight"), "weight");
  // A modifier alone (no hook) lets the key "weight" load into embedding.weight.
  StateDict sd;
  sd.insert("weight", at::full({4, 4}, 2.0f));
  sd.insert("fusion_embedding.weight", at::full({4, 4}, 3.0f));
  struct ModifierOnly : ct::FusionEmbeddingImpl, c10dtest::StateDictHooks {
    ModifierOnly() : ct::FusionEmbeddingImpl(4, 4, 4) {}
    std::map<std::string, std::string> fqn_modifiers() const override {
      return {{"weight", "embedding"}};
    }
  } only;
  c10dtest::set_model_state_dict(only, sd);
  EXPECT_TRUE(at::equal(only.embedding->weight, at::full({4, 4}, 2.0f)));
  // ParamLayouts take paths: the state-dict key of a renamed parameter is named with its path
  // (checked before any layout is used, so no mesh is needed here).
  c10dtest::ParamLayouts by_key;
  by_key["weight"] = c10dtest::ParamLayout{};
  const std::string by_key_error = error_of<c10dtest::ConfigError>(
      [&] { c10dtest::get_model_state_dict(*modified, {}, by_key); });
  EXPECT_NE(by_key_error.find("ParamLayouts key 'weight' is not a parameter or buffer path of "
                              "the module (embedding.weight, fusion_embedding.weight); it is the "
                              "state-dict key of 'embedding.weight', which is the path to use"),
            std::string::npos)
      << by_key_error;
}

TEST(ModelStateDict, StrictLoadingNamesUnexpectedAndMissingKeys) {
  ct::UnitModule source;
  auto sd = c10dtest::get_model_state_dict(*source);
  sd.insert("extra.weight", at::ones({1}));
  ct::UnitModule target;
  EXPECT_EQ(error_of([&] { c10dtest::set_model_state_dict(*target, sd); }),
            "Error(s) in loading state_dict: Unexpected key(s) in state_dict: \"extra.weight\".");
  sd.erase("extra.weight");
  sd.erase("l2.bias");
  EXPECT_EQ(error_of([&] { c10dtest::set_model_state_dict(*target, sd); }),
            "Error(s) in loading state_dict: Missing key(s) in state_dict: \"l2.bias\".");
  sd.insert("extra.weight", at::ones({1}));
  StateDictOptions lenient;
  lenient.strict = false;
  const auto result = c10dtest::set_model_state_dict(*target, sd, lenient);
  EXPECT_EQ(result.missing_keys, (std::vector<std::string>{"l2.bias"}));
  EXPECT_EQ(result.unexpected_keys, (std::vector<std::string>{"extra.weight"}));
  EXPECT_TRUE(at::equal(target->l1->weight, source->l1->weight));
  EXPECT_FALSE(at::equal(target->l2->bias, source->l2->bias));
}

TEST(ModelStateDict, ShapeAndDtypeMismatchesAreNamed) {
  ct::UnitModule target;
  auto sd = c10dtest::get_model_state_dict(*target);
  sd.insert("l1.bias", at::zeros({99}));
  EXPECT_EQ(error_of([&] { c10dtest::set_model_state_dict(*target, sd); }),
            "size mismatch for l1.bias: copying a param with shape [99] from checkpoint, the "
            "shape in current model is [100]");
  sd.insert("l1.bias", at::zeros({100}, at::kDouble));
  EXPECT_EQ(error_of([&] { c10dtest::set_model_state_dict(*target, sd); }),
            "dtype mismatch for l1.bias: the checkpoint holds Double, the model Float");
  sd.insert("l1.bias", "not a tensor");
  EXPECT_EQ(error_of([&] { c10dtest::set_model_state_dict(*target, sd); }),
            "'l1.bias' holds a string, not a tensor");
}

TEST(ModelStateDict, FrozenParametersAreLeftOutWhenAsked) {
  ct::UnitModule model;
  model->l1->weight.set_requires_grad(false);
  StateDictOptions options;
  options.ignore_frozen_params = true;
  const auto sd = c10dtest::get_model_state_dict(*model, options);
  EXPECT_FALSE(sd.contains("l1.weight"));
  EXPECT_EQ(sd.size(), 5u);
  // Loading with the same option does not miss the frozen parameter.
  ct::UnitModule other;
  other->l1->weight.set_requires_grad(false);
  EXPECT_TRUE(c10dtest::set_model_state_dict(*other, sd, options).missing_keys.empty());
  EXPECT_TRUE(at::equal(other->l2->weight, model->l2->weight));
}

TEST(ModelStateDict, TiedWeightsAppearUnderBothNamesAndStayTied) {
  ct::TiedEmbeddingModel model(10, 4);
  const auto sd = c10dtest::get_model_state_dict(*model);
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"embedding.weight", "lm_head.weight"}));
  EXPECT_EQ(sd.at("embedding.weight").as<at::Tensor>().data_ptr(),
            sd.at("lm_head.weight").as<at::Tensor>().data_ptr());
  ct::TiedEmbeddingModel other(10, 4);
  c10dtest::set_model_state_dict(*other, sd);
  EXPECT_TRUE(at::equal(other->lm_head->weight, model->embedding->weight));
  EXPECT_EQ(other->lm_head->weight.data_ptr(), other->embedding->weight.data_ptr());
  EXPECT_EQ(other->forward(at::tensor({1, 2}, at::kLong).view({1, 2})).sizes(),
            (at::IntArrayRef{1, 2, 10}));
}

TEST(ModelStateDict, ValuesAreDetachedViewsOfTheParameters) {
  ct::UnitModule model;
  const auto sd = c10dtest::get_model_state_dict(*model);
  const auto& w = sd.at("l1.weight").as<at::Tensor>();
  EXPECT_FALSE(w.requires_grad());
  EXPECT_EQ(w.data_ptr(), model->l1->weight.data_ptr());
}

// Sharded: every rank keeps its rows of each Linear weight (FSDP-style, Shard(0)).
class ShardedModelStateDict : public c10dtest::DistributedTest {
 protected:
  // Replaces every parameter of `model` by its Shard(0) piece and returns the layouts.
  c10dtest::ParamLayouts shard_rows(torch::nn::Module& model) {
    auto mesh = c10dtest::DeviceMesh::create({world_size()});
    c10dtest::ParamLayouts layouts;
    for (auto& p : model.named_parameters()) {
      c10dtest::ParamLayout layout{mesh, {c10dtest::Shard{0}}, p.value().sizes().vec()};
      const auto d = c10dtest::distribute_tensor(p.value().detach(), mesh, layout.placements);
      torch::NoGradGuard no_grad;
      p.value().set_data(d.local().clone());
      layouts[p.key()] = layout;
    }
    return layouts;
  }
};

TEST_F(ShardedModelStateDict, DTensorValuesGatherToTheReference) {
  ct::UnitModule reference;  // same seed on every rank: identical everywhere
  ct::UnitModule sharded;
  c10dtest::set_model_state_dict(*sharded, c10dtest::get_model_state_dict(*reference));
  const auto layouts = shard_rows(*sharded);
  const auto sd = c10dtest::get_model_state_dict(*sharded, {}, layouts);
  ASSERT_TRUE(sd.at("l1.weight").is<c10dtest::DTensor>()) << sd.describe();
  EXPECT_EQ(sd.at("l1.weight").as<c10dtest::DTensor>().global_shape(),
            (std::vector<std::int64_t>{100, 100}));
  StateDictOptions full;
  full.full_state_dict = true;
  const auto gathered = c10dtest::get_model_state_dict(*sharded, full, layouts);
  const auto expected = c10dtest::get_model_state_dict(*reference);
  for (const auto& key : expected.keys()) {
    EXPECT_TRUE(at::equal(gathered.at(key).as<at::Tensor>(), expected.at(key).as<at::Tensor>()))
        << key;
  }
}

// Layouts at their edges: a DTensor on another mesh with the same placements, a Partial(sum)
// layout, a rank outside the layout's mesh, and a parameter that does not fit its layout.
TEST_F(ShardedModelStateDict, LayoutEdgesLoadAndSaveTheRightPieces) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  torch::nn::Linear lin(4, 2 * world_size());
  const at::Tensor full = at::arange(2 * world_size() * 4, at::kFloat).reshape({2 * world_size(), 4});
  std::vector<int> reversed;
  for (int r = world_size() - 1; r >= 0; --r) reversed.push_back(r);
  const auto mesh = c10dtest::DeviceMesh::create({world_size()});
  const auto backwards = c10dtest::DeviceMesh::create({world_size()}, reversed);
  c10dtest::ParamLayouts layouts;
  layouts["weight"] = {mesh, {c10dtest::Shard{0}}, full.sizes().vec()};
  {
    torch::NoGradGuard no_grad;
    lin->weight.set_data(c10dtest::distribute_tensor(full, mesh, {c10dtest::Shard{0}}).local().clone());
  }
  StateDictOptions full_sd;
  full_sd.full_state_dict = true;
  // The same placements on a mesh with the ranks reversed: each rank's piece is another's, so
  // the value is gathered and sliced, never taken as it is.
  StateDict sd;
  sd.insert("weight", c10dtest::distribute_tensor(full, backwards, {c10dtest::Shard{0}}));
  sd.insert("bias", lin->bias.detach().clone());
  c10dtest::set_model_state_dict(*lin, sd, {}, layouts);
  EXPECT_TRUE(at::equal(c10dtest::get_model_state_dict(*lin, full_sd, layouts).at("weight").as<at::Tensor>(), full));
  // A Partial(sum) layout: loading a full value gives each member what distribute_tensor would,
  // so that the members' sum is the value (not the value times the world size).
  c10dtest::ParamLayouts partial;
  partial["weight"] = {mesh, {c10dtest::Partial{}}, full.sizes().vec()};
  {
    torch::NoGradGuard no_grad;
    lin->weight.set_data(full.clone());
  }
  StateDict plain;
  plain.insert("weight", full);
  plain.insert("bias", lin->bias.detach().clone());
  c10dtest::set_model_state_dict(*lin, plain, {}, partial);
  EXPECT_TRUE(at::equal(c10dtest::get_model_state_dict(*lin, full_sd, partial).at("weight").as<at::Tensor>(), full));
  // Outside the layout's mesh: full_state_dict gives that rank the empty local tensor.
  const auto first = c10dtest::DeviceMesh::create({1}, {0});
  c10dtest::ParamLayouts only_zero;
  only_zero["weight"] = {first, {c10dtest::Replicate{}}, full.sizes().vec()};
  {
    torch::NoGradGuard no_grad;
    lin->weight.set_data(rank() == 0 ? full.clone() : at::empty({0, 4}));
  }
  const StateDict got = c10dtest::get_model_state_dict(*lin, full_sd, only_zero);
  if (rank() == 0) {
    EXPECT_TRUE(at::equal(got.at("weight").as<at::Tensor>(), full));
  } else {
    EXPECT_EQ(got.at("weight").as<at::Tensor>().numel(), 0);
  }
  // A ParamLayouts key that is no parameter's path: named, never silently ignored.
  c10dtest::ParamLayouts typo;
  typo["weights"] = layouts.at("weight");
  for (const std::string& typo_error :
       {error_of<c10dtest::ConfigError>([&] { c10dtest::get_model_state_dict(*lin, {}, typo); }),
        error_of<c10dtest::ConfigError>(
            [&] { c10dtest::set_model_state_dict(*lin, plain, {}, typo); })}) {
    EXPECT_NE(typo_error.find("ParamLayouts key 'weights' is not a parameter or buffer path of "
                              "the module (weight, bias)"),
              std::string::npos)
        << typo_error;
  }
  // A parameter that does not hold its layout's piece: the error names it.
  {
    torch::NoGradGuard no_grad;
    lin->weight.set_data(full.clone());
  }
  try {
    c10dtest::get_model_state_dict(*lin, {}, layouts);
    ADD_FAILURE() << "a whole tensor passed for a Shard(0) piece";
  } catch (const c10dtest::ShardingError& e) {
    EXPECT_NE(std::string(e.what()).find("get_model_state_dict: the layout of 'weight': DTensor: rank"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(ShardedModelStateDict, CpuOffloadWithFullStateDictLeavesOthersEmpty) {
  ct::UnitModule model;
  const auto layouts = shard_rows(*model);
  StateDictOptions options;
  options.full_state_dict = true;
  options.cpu_offload = true;
  const auto sd = c10dtest::get_model_state_dict(*model, options, layouts);
  if (rank() == 0) {
    EXPECT_EQ(sd.size(), 6u);
    EXPECT_TRUE(sd.at("l1.weight").as<at::Tensor>().device().is_cpu());
    EXPECT_EQ(sd.at("l1.weight").as<at::Tensor>().sizes(), (at::IntArrayRef{100, 100}));
  } else {
    EXPECT_TRUE(sd.empty()) << sd.describe();
  }
}

TEST_F(ShardedModelStateDict, FullOrShardedStateDictsLoadIntoAShardedModel) {
  ct::UnitModule reference;
  const auto full = c10dtest::get_model_state_dict(*reference);
  ct::UnitModule from_full;
  const auto layouts = shard_rows(*from_full);
  c10dtest::set_model_state_dict(*from_full, full, {}, layouts);
  ct::UnitModule from_sharded;
  shard_rows(*from_sharded);
  c10dtest::set_model_state_dict(*from_sharded,
                                 c10dtest::get_model_state_dict(*from_full, {}, layouts), {},
                                 layouts);
  StateDictOptions gather;
  gather.full_state_dict = true;
  for (auto* model : {&from_full, &from_sharded}) {
    const auto back = c10dtest::get_model_state_dict(**model, gather, layouts);
    for (const auto& key : full.keys()) {
      EXPECT_TRUE(at::equal(back.at(key).as<at::Tensor>(), full.at(key).as<at::Tensor>())) << key;
    }
  }
}

TEST_F(ShardedModelStateDict, BroadcastFromRankZero) {
  at::manual_seed(1000 + rank());  // the ranks' models differ...
  ct::UnitModule model;
  at::manual_seed(7);
  ct::UnitModule reference;  // ...but the reference does not
  StateDict mine;
  if (rank() == 0) mine = c10dtest::get_model_state_dict(*reference);
  StateDictOptions options;
  options.broadcast_from_rank0 = true;
  c10dtest::set_model_state_dict(*model, mine, options);
  EXPECT_TRUE(at::equal(model->l2->weight, reference->l2->weight));
  EXPECT_TRUE(at::equal(model->seq[1]->as<torch::nn::Linear>()->bias,
                        reference->seq[1]->as<torch::nn::Linear>()->bias));
}

}  // namespace
