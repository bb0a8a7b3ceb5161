// Optimizer state dicts: round trips for every supported optimizer with bit-identical training
// afterwards, param groups, the flattened form, errors, and sharded state.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/optimizer_state_dict.hpp>
#include <c10dtest/testing/modules.hpp>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <functional>
#include <map>
#include <string>

namespace {

using c10dtest::StateDict;
using c10dtest::StateDictError;
using c10dtest::StateList;
namespace ct = c10dtest::testing;
namespace optim = torch::optim;

using MakeOptimizer = std::function<std::unique_ptr<optim::Optimizer>(std::vector<at::Tensor>)>;

struct Case {
  const char* name;
  MakeOptimizer make;
  MakeOptimizer make_other;  // other hyperparameters: the state dict must overwrite them
};

std::vector<Case> cases() {
  return {
      {"SGD",
       [](auto p) { return std::make_unique<optim::SGD>(p, optim::SGDOptions(0.05).momentum(0.9).nesterov(true)); },
       [](auto p) { return std::make_unique<optim::SGD>(p, optim::SGDOptions(1.0).momentum(0.5).nesterov(true)); }},
      {"Adam",
       [](auto p) { return std::make_unique<optim::Adam>(p, optim::AdamOptions(1e-3).weight_decay(0.01)); },
       [](auto p) { return std::make_unique<optim::Adam>(p, optim::AdamOptions(0.5)); }},
      {"AdamW",
       [](auto p) { return std::make_unique<optim::AdamW>(p, optim::AdamWOptions(2e-3).amsgrad(true)); },
       [](auto p) { return std::make_unique<optim::AdamW>(p, optim::AdamWOptions(0.5).amsgrad(true)); }},
      {"Adagrad",
       [](auto p) { return std::make_unique<optim::Adagrad>(p, optim::AdagradOptions(0.01).lr_decay(0.001)); },
       [](auto p) { return std::make_unique<optim::Adagrad>(p, optim::AdagradOptions(0.5)); }},
      {"RMSprop",
       [](auto p) { return std::make_unique<optim::RMSprop>(p, optim::RMSpropOptions(0.01).momentum(0.9).centered(true)); },
       [](auto p) { return std::make_unique<optim::RMSprop>(p, optim::RMSpropOptions(0.5).momentum(0.9).centered(true)); }},
  };
}

void train(torch::nn::Module& model, optim::Optimizer& opt, const at::Tensor& x, int steps) {
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    auto* unit = dynamic_cast<ct::UnitModuleImpl*>(&model);
    unit->forward(x).pow(2).sum().backward();
    opt.step();
  }
}

bool same_parameters(torch::nn::Module& a, torch::nn::Module& b) {
  const auto pa = a.parameters();
  const auto pb = b.parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) {
    if (!at::equal(pa[i], pb[i])) return false;
  }
  return true;
}

class OptimizerStateDict : public c10dtest::DistributedTest {};

TEST_F(OptimizerStateDict, EveryOptimizerRoundTripsAndTrainsOnIdentically) {
  const at::Tensor x = at::rand({8, 100});
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    ct::UnitModule a;
    auto opt_a = c.make(a->parameters());
    train(*a, *opt_a, x, 3);
    const StateDict osd = c10dtest::get_optimizer_state_dict(*a, *opt_a);
    ASSERT_TRUE(osd.at("state").as<StateDict>().contains("l1.weight")) << osd.describe();
    const auto& groups = osd.at("param_groups").as<StateList>();
    ASSERT_EQ(groups.size(), 1u);
    EXPECT_EQ(groups[0].as<StateDict>().at("params").as<StateList>().size(), 6u);

    ct::UnitModule b;
    c10dtest::set_model_state_dict(*b, c10dtest::get_model_state_dict(*a));
    auto opt_b = c.make_other(b->parameters());
    c10dtest::set_optimizer_state_dict(*b, *opt_b, osd);
    EXPECT_EQ(opt_b->param_groups()[0].options().get_lr(), opt_a->param_groups()[0].options().get_lr());
    // Loading copies: b's state shares no memory with the state dict (which is a's).
    const auto loaded = c10dtest::get_optimizer_state_dict(*b, *opt_b);
    const auto& given = osd.at("state").as<StateDict>().at("l1.weight").as<StateDict>();
    const auto& taken = loaded.at("state").as<StateDict>().at("l1.weight").as<StateDict>();
    EXPECT_EQ(given.keys(), taken.keys());
    for (std::size_t k = 0; k < given.size(); ++k) {
      if (!given.value(k).is<at::Tensor>()) continue;
      EXPECT_TRUE(at::equal(given.value(k).as<at::Tensor>(), taken.value(k).as<at::Tensor>()));
      EXPECT_NE(given.value(k).as<at::Tensor>().data_ptr(), taken.value(k).as<at::Tensor>().data_ptr())
          << given.keys()[k];
    }
    train(*a, *opt_a, x, 3);
    train(*b, *opt_b, x, 3);
    EXPECT_TRUE(same_parameters(*a, *b)) << "training diverged after loading the state dict";
  }
}

TEST_F(OptimizerStateDict, TwoGroupsAndAnEmptyOneKeepTheirHyperparameters) {
  ct::UnitModule a;
  std::vector<at::Tensor> first{a->l1->weight, a->l1->bias};
  std::vector<at::Tensor> second{a->l2->weight, a->l2->bias};
  optim::Adam opt_a(first, optim::AdamOptions(0.1));
  opt_a.add_param_group(optim::OptimizerParamGroup(second, std::make_unique<optim::AdamOptions>(0.2)));
  opt_a.add_param_group(optim::OptimizerParamGroup(std::vector<at::Tensor>{},
                                                   std::make_unique<optim::AdamOptions>(0.3)));
  const at::Tensor x = at::rand({4, 100});
  opt_a.zero_grad();
  a->forward(x).sum().backward();
  opt_a.step();
  const StateDict osd = c10dtest::get_optimizer_state_dict(*a, opt_a);
  const auto& groups = osd.at("param_groups").as<StateList>();
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[1].as<StateDict>().at("lr").as<double>(), 0.2);
  EXPECT_TRUE(groups[2].as<StateDict>().at("params").as<StateList>().empty());

  ct::UnitModule b;
  // The same groups in another order: matched by their parameters, not their position.
  optim::Adam opt_b(std::vector<at::Tensor>{b->l2->weight, b->l2->bias}, optim::AdamOptions(9.0));
  opt_b.add_param_group(optim::OptimizerParamGroup(
      std::vector<at::Tensor>{b->l1->weight, b->l1->bias}, std::make_unique<optim::AdamOptions>(9.0)));
  opt_b.add_param_group(optim::OptimizerParamGroup(std::vector<at::Tensor>{},
                                                   std::make_unique<optim::AdamOptions>(9.0)));
  c10dtest::set_optimizer_state_dict(*b, opt_b, osd);
  EXPECT_EQ(opt_b.param_groups()[0].options().get_lr(), 0.2);
  EXPECT_EQ(opt_b.param_groups()[1].options().get_lr(), 0.1);
  EXPECT_EQ(opt_b.param_groups()[2].options().get_lr(), 0.3);
}

TEST_F(OptimizerStateDict, FlattenedFormRoundTrips) {
  ct::UnitModule a;
  optim::AdamW opt_a(a->parameters(), optim::AdamWOptions(0.01));
  const at::Tensor x = at::rand({4, 100});
  train(*a, opt_a, x, 2);
  const StateDict flat =
      c10dtest::flatten_optimizer_state_dict(c10dtest::get_optimizer_state_dict(*a, opt_a));
  EXPECT_TRUE(flat.contains("state.l1.weight.exp_avg")) << flat.describe(8);
  EXPECT_EQ(flat.at("state.seq.1.bias.step").as<std::int64_t>(), 2);
  EXPECT_EQ(flat.at("param_groups.l2.weight.lr").as<double>(), 0.01);
  ct::UnitModule b;
  c10dtest::set_model_state_dict(*b, c10dtest::get_model_state_dict(*a));
  optim::AdamW opt_b(b->parameters(), optim::AdamWOptions(0.5));
  c10dtest::set_optimizer_state_dict(*b, opt_b, flat);  // the flat form is recognised
  train(*a, opt_a, x, 2);
  train(*b, opt_b, x, 2);
  EXPECT_TRUE(same_parameters(*a, *b));
}

TEST_F(OptimizerStateDict, ProblemsAreNamed) {
  ct::UnitModule a;
  optim::Adam opt(a->parameters(), optim::AdamOptions(0.01));
  train(*a, opt, at::rand({2, 100}), 1);
  StateDict osd = c10dtest::get_optimizer_state_dict(*a, opt);
  StateDict missing = osd;
  missing.at("state").as<StateDict>().erase("l2.bias");
  try {
    c10dtest::set_optimizer_state_dict(*a, opt, missing);
    FAIL() << "expected an error";
  } catch (const StateDictError& e) {
    EXPECT_STREQ(e.what(), "optimizer state of 'l2.bias' is missing");
  }
  StateDict wrong = osd;
  wrong.at("state").as<StateDict>().at("l1.bias").as<StateDict>().insert("exp_avg", at::zeros({3}));
  try {
    c10dtest::set_optimizer_state_dict(*a, opt, wrong);
    FAIL() << "expected an error";
  } catch (const StateDictError& e) {
    EXPECT_STREQ(e.what(), "optimizer state l1.bias.exp_avg has shape [3], the parameter [100]");
  }
  StateDict no_lr = osd;
  no_lr.at("param_groups").as<StateList>()[0].as<StateDict>().erase("lr");
  try {
    c10dtest::set_optimizer_state_dict(*a, opt, no_lr);
    FAIL() << "expected an error";
  } catch (const StateDictError& e) {
    EXPECT_NE(std::string(e.what()).find("param group 0 [l1.weight, l1.bias, seq.1.weight, "
                                         "seq.1.bias, ...]: 'lr' is missing"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(OptimizerStateDict, ShardedStateIsLaidOutLikeItsParameters) {
  // A full model trained two steps; its optimizer state loaded into a row-sharded copy and read
  // back as DTensors, then gathered: the same state.
  ct::UnitModule full;
  optim::Adam opt_full(full->parameters(), optim::AdamOptions(0.01));
  train(*full, opt_full, at::rand({4, 100}), 2);
  const StateDict expected = c10dtest::get_optimizer_state_dict(*full, opt_full);

  ct::UnitModule sharded;
  auto mesh = c10dtest::DeviceMesh::create({world_size()});
  c10dtest::ParamLayouts layouts;
  for (auto& p : sharded->named_parameters()) {
    c10dtest::ParamLayout layout{mesh, {c10dtest::Shard{0}}, p.value().sizes().vec()};
    const auto d = c10dtest::distribute_tensor(p.value().detach(), mesh, layout.placements);
    torch::NoGradGuard no_grad;
    p.value().set_data(d.local().clone());
    layouts[p.key()] = layout;
  }
  optim::Adam opt_sharded(sharded->parameters(), optim::AdamOptions(0.5));
  c10dtest::set_optimizer_state_dict(*sharded, opt_sharded, expected, {}, layouts);
  const StateDict local = c10dtest::get_optimizer_state_dict(*sharded, opt_sharded, {}, layouts);
  EXPECT_TRUE(local.at("state").as<StateDict>().at("l1.weight").as<StateDict>().at("exp_avg")
                  .is<c10dtest::DTensor>());
  c10dtest::StateDictOptions gather;
  gather.full_state_dict = true;
  const StateDict back = c10dtest::get_optimizer_state_dict(*sharded, opt_sharded, gather, layouts);
  const auto& want = expected.at("state").as<StateDict>();
  const auto& got = back.at("state").as<StateDict>();
  ASSERT_EQ(want.keys(), got.keys());
  for (const auto& fqn : want.keys()) {
    for (const char* field : {"exp_avg", "exp_avg_sq"}) {
      EXPECT_TRUE(at::equal(want.at(fqn).as<StateDict>().at(field).as<at::Tensor>(),
                            got.at(fqn).as<StateDict>().at(field).as<at::Tensor>()))
          << fqn << "." << field;
    }
    EXPECT_EQ(got.at(fqn).as<StateDict>().at("step").as<std::int64_t>(), 2);
  }
}

// The state dict PyTorch's optimizer.state_dict() holds for the same state: parameter ids, the
// step as a float tensor (PyTorch 2.x), and the param-group entries LibTorch has not, at
// PyTorch's defaults.
StateDict as_pytorch_writes_it(const torch::nn::Module& model, const StateDict& osd) {
  std::map<std::string, std::int64_t> ids;
  for (const auto& p : model.named_parameters()) {
    ids.emplace(p.key(), static_cast<std::int64_t>(ids.size()));
  }
  StateDict state;
  const auto& own = osd.at("state").as<StateDict>();
  for (std::size_t i = 0; i < own.size(); ++i) {
    StateDict per = own.value(i).as<StateDict>();
    if (per.contains("step")) {
      per.insert("step", at::scalar_tensor(static_cast<double>(per.at("step").as<std::int64_t>()),
                                           at::kFloat));
    }
    state.insert(std::to_string(ids.at(own.keys()[i])), per);
  }
  StateList groups;
  for (const auto& g : osd.at("param_groups").as<StateList>()) {
    StateDict group = g.as<StateDict>();
    StateList params;
    for (const auto& fqn : group.at("params").as<StateList>()) {
      params.emplace_back(ids.at(fqn.as<std::string>()));
    }
    group.insert("params", params);
    group.insert("foreach", c10dtest::StateNone{});
    group.insert("maximize", false);
    group.insert("capturable", false);
    group.insert("differentiable", false);
    group.insert("fused", c10dtest::StateNone{});
    groups.emplace_back(group);
  }
  StateDict out;
  out.insert("state", state);
  out.insert("param_groups", groups);
  return out;
}

class PyTorchOptimizerFile : public c10dtest::DistributedTest,
                             public c10dtest::VerifyStateDictMixin {};

TEST_F(PyTorchOptimizerFile, EveryOptimizersPyTorchLayoutVerifiesAgainstTheCppOne) {
  const at::Tensor x = at::rand({8, 100});
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    ct::UnitModule a;
    auto opt = c.make(a->parameters());
    train(*a, *opt, x, 3);
    const StateDict osd = c10dtest::get_optimizer_state_dict(*a, *opt);
    const StateDict py = as_pytorch_writes_it(*a, osd);
    // As PyTorch's file is, the step's type and the extra entries are differences.
    EXPECT_FALSE(verify_osd(*a, *opt, py, osd));
    const StateDict ref = c10dtest::from_pytorch_optimizer_state_dict(*a, *opt, py);
    EXPECT_TRUE(verify_osd(*a, *opt, ref, osd));
    const StateDict& group = ref.at("param_groups").as<StateList>().at(0).as<StateDict>();
    EXPECT_EQ(group.keys(),
              osd.at("param_groups").as<StateList>().at(0).as<StateDict>().keys());
    const StateDict& l1 = ref.at("state").as<StateDict>().at("l1.weight").as<StateDict>();
    if (l1.contains("step")) EXPECT_EQ(l1.at("step").as<std::int64_t>(), 3);
  }
}

TEST_F(PyTorchOptimizerFile, WhatLibTorchCannotDoStaysADifference) {
  ct::UnitModule a;
  optim::Adam opt(a->parameters(), optim::AdamOptions(0.01));
  train(*a, opt, at::rand({2, 100}), 2);
  const StateDict osd = c10dtest::get_optimizer_state_dict(*a, opt);
  const auto why = [&](StateDict py) {
    const auto r = verify_osd(*a, opt, c10dtest::from_pytorch_optimizer_state_dict(*a, opt, py),
                              osd);
    EXPECT_FALSE(r);
    return std::string(r.message());
  };
  StateDict maximize = as_pytorch_writes_it(*a, osd);
  maximize.at("param_groups").as<StateList>()[0].as<StateDict>().insert("maximize", true);
  EXPECT_NE(why(maximize).find("maximize"), std::string::npos);
  StateDict scheduled = as_pytorch_writes_it(*a, osd);
  scheduled.at("param_groups").as<StateList>()[0].as<StateDict>().insert("initial_lr", 0.01);
  EXPECT_NE(why(scheduled).find("initial_lr"), std::string::npos);
  StateDict half_step = as_pytorch_writes_it(*a, osd);
  half_step.at("state").as<StateDict>().at("1").as<StateDict>().insert(
      "step", at::scalar_tensor(2.5, at::kFloat));
  const std::string m = why(half_step);
  EXPECT_NE(m.find("l1.bias.step"), std::string::npos) << m;
  StateDict bad_id = as_pytorch_writes_it(*a, osd);
  bad_id.at("state").as<StateDict>().rename("5", "6");
  try {
    c10dtest::from_pytorch_optimizer_state_dict(*a, opt, bad_id);
    FAIL() << "expected an error";
  } catch (const StateDictError& e) {
    EXPECT_NE(std::string(e.what()).find("parameter id 6"), std::string::npos) << e.what();
  }
}

}  // namespace
