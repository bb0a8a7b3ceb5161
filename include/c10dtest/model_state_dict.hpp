// Model state dicts of torch::nn::Module trees, keyed by fully-qualified names, with the options,
// hooks and FQN modifiers of PyTorch's torch.distributed.checkpoint.state_dict.
//
//   auto sd = c10dtest::get_model_state_dict(*model);                    // "l1.weight", ...
//   c10dtest::set_model_state_dict(*fresh, sd);                          // strict by default
//
// Sharded modules hold their local piece in the parameter; a ParamLayouts map (parameter path ->
// mesh, placements, global shape) says how, and the state dict then holds DTensors.
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "c10dtest/dtensor.hpp"
#include "c10dtest/state_dict.hpp"

namespace c10dtest {

// Mirrors torch.distributed.checkpoint.state_dict.StateDictOptions.
struct StateDictOptions {
  // Values are full tensors (sharded ones are gathered: collective) instead of DTensors.
  bool full_state_dict = false;
  // Values are moved to CPU; with full_state_dict only rank 0 (of current_context(), see
  // context.hpp) keeps them, others get {}.
  bool cpu_offload = false;
  // Parameters with requires_grad == false are left out (and not expected when loading).
  bool ignore_frozen_params = false;
  // Loading: missing or unexpected keys are an error (else they are returned).
  bool strict = true;
  // Loading: only rank 0's dict is read (full tensors); the others pass {} (collective).
  bool broadcast_from_rank0 = false;
};

// Optional interface: a module that also derives from StateDictHooks takes part in saving and
// loading like a PyTorch module with state-dict hooks and _fqn_modifiers.
class StateDictHooks {
 public:
  virtual ~StateDictHooks() = default;
  // After this module's subtree was collected into `sd` (its keys start with `prefix`): may
  // rename, add or remove entries.
  virtual void state_dict_hook(StateDict& sd, const std::string& prefix) const;
  // Before loading, on the incoming dict (keys of this subtree start with `prefix`): maps keys
  // back to what the module holds.
  virtual void load_state_dict_pre_hook(StateDict& sd, const std::string& prefix) const;
  // PyTorch's _fqn_modifiers: {state-dict name -> child module name}. {"weight": "embedding"}
  // means the key "weight" of this module is the parameter "embedding.weight".
  virtual std::map<std::string, std::string> fqn_modifiers() const;
};

// How a sharded parameter or buffer is laid out; the module holds this rank's piece.
struct ParamLayout {
  std::shared_ptr<const DeviceMesh> mesh;
  std::vector<Placement> placements;
  std::vector<std::int64_t> global_shape;
};
// Keyed by parameter or buffer path ("u1.l1.weight").
using ParamLayouts = std::map<std::string, ParamLayout>;

// The FQN under which the parameter at `path` appears, after FQN modifiers: "embedding.weight"
// of a FusionEmbeddingWithModifier is "weight".
std::string fqn_of(const torch::nn::Module& module, const std::string& path);
// The inverse: the parameter or buffer path a state-dict key names, following FQN modifiers.
std::string path_of(const torch::nn::Module& module, const std::string& key);

// Parameters (then buffers) of every module, depth first, keyed by path, then each module's
// state_dict_hook from the leaves up. Tied parameters appear under every name. Collective when
// full_state_dict gathers sharded values.
StateDict get_model_state_dict(const torch::nn::Module& module, const StateDictOptions& options = {},
                               const ParamLayouts& layouts = {});

struct LoadResult {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
};

// Runs the load pre-hooks, resolves keys (FQN modifiers), checks shapes and dtypes, and copies
// the values into the module (a full value into a sharded parameter is sliced to its piece; a
// DTensor or ShardedTensor into a full parameter is gathered: collective). Strict (the default):
// StateDictError "Missing key(s) in state_dict: ... Unexpected key(s) in state_dict: ...".
// Non-strict: returns those lists. Shape and dtype mismatches are always errors naming the key.
LoadResult set_model_state_dict(torch::nn::Module& module, const StateDict& state_dict,
                                const StateDictOptions& options = {},
                                const ParamLayouts& layouts = {});

}  // namespace c10dtest
