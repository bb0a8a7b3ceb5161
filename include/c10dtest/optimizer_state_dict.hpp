// Optimizer state dicts of LibTorch optimizers (SGD, Adam, AdamW, Adagrad, RMSprop), keyed by the
// FQNs of the model's parameters, as torch.distributed.checkpoint.state_dict produces them:
//
//   {"state": {"l1.weight": {"step": 3, "exp_avg": ..., "exp_avg_sq": ...}, ...},
//    "param_groups": [{"lr": 0.001, "betas": [0.9, 0.999], ..., "params": ["l1.weight", ...]}]}
//
// With ParamLayouts, state tensors of sharded parameters are DTensors laid out like them.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "c10dtest/model_state_dict.hpp"
#include "c10dtest/state_dict.hpp"

namespace c10dtest {

// full_state_dict gathers sharded state (collective); cpu_offload as for models.
StateDict get_optimizer_state_dict(const torch::nn::Module& model,
                                   const torch::optim::Optimizer& optimizer,
                                   const StateDictOptions& options = {},
                                   const ParamLayouts& layouts = {});

// Loads `osd` (nested or flattened) into `optimizer`, whose parameters belong to `model`: each
// of the optimizer's param groups takes its hyperparameters from the group of `osd` that holds
// exactly the same FQNs, and each parameter's state is created from `osd.state[fqn]` (copied; a
// full tensor is sliced to a sharded parameter's piece). StateDictError names the FQN, the group
// or the field that does not fit.
void set_optimizer_state_dict(const torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                              const StateDict& osd, const StateDictOptions& options = {},
                              const ParamLayouts& layouts = {});

// {"state": {fqn: {k: v}}, "param_groups": [{k: v, "params": [fqns]}]} <->
// {"state.<fqn>.<k>": v, "param_groups.<fqn>.<k>": v}.
StateDict flatten_optimizer_state_dict(const StateDict& osd);
// Groups come back as the optimizer's current grouping of `model`'s parameters.
StateDict unflatten_optimizer_state_dict(const StateDict& flat, const torch::nn::Module& model,
                                         const torch::optim::Optimizer& optimizer);

}  // namespace c10dtest
