#include "common/text.hpp"
#include "c10dtest/model_state_dict.hpp"

#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <sstream>
#include <string_view>
#include <unordered_set>

#include "c10dtest/distributed_state_dict.hpp"
#include "common/tensor.hpp"
#include "offload.hpp"
#include "parameter_value.hpp"
#include "c10dtest/context.hpp"

namespace c10dtest {

void StateDictHooks::state_dict_hook(StateDict&, const std::string&) const {}
void StateDictHooks::load_state_dict_pre_hook(StateDict&, const std::string&) const {}
std::map<std::string, std::string> StateDictHooks::fqn_modifiers() const { return {}; }

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == '.') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}


const torch::nn::Module* child_of(const torch::nn::Module& m, const std::string& name) {
  const auto children = m.named_children();
  const auto* found = children.find(name);
  return found == nullptr ? nullptr : found->get();
}

std::map<std::string, std::string> modifiers_of(const torch::nn::Module& m) {
  const auto* hooks = dynamic_cast<const StateDictHooks*>(&m);
  return hooks == nullptr ? std::map<std::string, std::string>{} : hooks->fqn_modifiers();
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ".") + p;
  return out;
}

struct Slot {
  std::string path;
  at::Tensor tensor;
  bool frozen = false;
};

// Parameters then buffers of `m`, then its children's, depth first.
void slots(const torch::nn::Module& m, const std::string& prefix, std::vector<Slot>* out) {
  for (const auto& p : m.named_parameters(/*recurse=*/false)) {
    out->push_back({prefix + p.key(), p.value(), !p.value().requires_grad()});
  }
  for (const auto& b : m.named_buffers(/*recurse=*/false)) {
    out->push_back({prefix + b.key(), b.value(), false});
  }
  for (const auto& c : m.named_children()) slots(*c.value(), prefix + c.key() + ".", out);
}

// Every key of `layouts` must be a parameter or buffer path of the module: a misspelled key, or
// a state-dict key given for a renamed parameter, would leave that parameter's piece saved as a
// plain tensor, to be found much later as a wrong shape.
void check_layout_keys(const torch::nn::Module& module, const std::vector<Slot>& all,
                       const ParamLayouts& layouts, const char* who) {
  if (layouts.empty()) return;
  std::unordered_set<std::string_view> paths;
  for (const auto& s : all) paths.insert(s.path);
  for (const auto& [key, layout] : layouts) {
    if (paths.count(key) != 0) continue;
    std::string listed;
    for (std::size_t i = 0; i < all.size() && i < 8; ++i) listed += (i ? ", " : "") + all[i].path;
    if (all.size() > 8) listed += ", ...";
    const std::string path = path_of(module, key);
    throw ConfigError(std::string(who) + ": ParamLayouts key '" + key +
                      "' is not a parameter or buffer path of the module (" + listed + ")" +
                      (path != key && paths.count(path) != 0
                           ? "; it is the state-dict key of '" + path + "', which is the path to use"
                           : ""));
  }
}

void run_save_hooks(const torch::nn::Module& m, const std::string& prefix, StateDict& sd) {
  for (const auto& c : m.named_children()) run_save_hooks(*c.value(), prefix + c.key() + ".", sd);
  if (const auto* hooks = dynamic_cast<const StateDictHooks*>(&m)) hooks->state_dict_hook(sd, prefix);
}

void run_load_hooks(const torch::nn::Module& m, const std::string& prefix, StateDict& sd) {
  if (const auto* hooks = dynamic_cast<const StateDictHooks*>(&m)) {
    hooks->load_state_dict_pre_hook(sd, prefix);
  }
  for (const auto& c : m.named_children()) run_load_hooks(*c.value(), prefix + c.key() + ".", sd);
}


}  // namespace

namespace detail {

at::Tensor tensor_for_parameter(const StateValue& value, const ParamLayout* layout,
                                const std::string& what) {
  // Laid out like the parameter (the same placements, global shape and mesh: shape and ranks):
  // this rank's piece as it is.
  if (value.is<DTensor>() && layout != nullptr &&
      value.as<DTensor>().placements() == layout->placements &&
      value.as<DTensor>().global_shape() == layout->global_shape &&
      value.as<DTensor>().mesh()->shape() == layout->mesh->shape() &&
      value.as<DTensor>().mesh()->ranks() == layout->mesh->ranks()) {
    return value.as<DTensor>().local();
  }
  at::Tensor full;
  if (value.is<at::Tensor>()) {
    full = value.as<at::Tensor>();
  } else if (value.is<DTensor>()) {
    full = value.as<DTensor>().full_tensor();
  } else if (value.is<ShardedTensor>()) {
    full = value.as<ShardedTensor>().full_tensor();
  } else {
    return {};
  }
  if (layout == nullptr) return full;
  if (full.sizes().vec() != layout->global_shape) {
    throw StateDictError("size mismatch for " + what + ": copying a param with shape " +
                         shape_text(full.sizes()) +
                         " from checkpoint, the shape in current model is " +
                         shape_text(layout->global_shape) + " (sharded)");
  }
  // This rank's piece of the layout. Along a Partial dim, as distribute_tensor gives it: the
  // value at coordinate 0 and zeros elsewhere for sum, ones elsewhere for product, the value
  // everywhere for avg, max and min (so that the members' reduction is the full value).
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> offset;
  const auto coord = layout->mesh->coordinate_of(layout->mesh->my_rank());
  local_extent(layout->global_shape, layout->placements, *layout->mesh, coord, &shape, &offset);
  at::Tensor piece = slice_block(full, shape, offset);
  if (std::any_of(layout->placements.begin(), layout->placements.end(),
                  [](const Placement& p) { return std::holds_alternative<Partial>(p); })) {
    piece = piece.clone();
    partial_piece(piece, layout->placements, coord);
  }
  return piece;
}

}  // namespace detail

std::string fqn_of(const torch::nn::Module& module, const std::string& path) {
  const auto parts = split(path);
  std::vector<std::string> out;
  const torch::nn::Module* curr = &module;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (curr != nullptr && i + 1 < parts.size()) {
      const auto mods = modifiers_of(*curr);
      const auto it = mods.find(parts[i + 1]);
      if (it != mods.end() && it->second == parts[i]) {
        // "embedding.weight" where {"weight": "embedding"}: the child's name is left out.
        curr = child_of(*curr, parts[i]);
        continue;
      }
    }
    out.push_back(parts[i]);
    curr = curr == nullptr ? nullptr : child_of(*curr, parts[i]);
  }
  return join(out);
}

std::string path_of(const torch::nn::Module& module, const std::string& key) {
  std::vector<std::string> out;
  const torch::nn::Module* curr = &module;
  for (const auto& part : split(key)) {
    if (curr != nullptr) {
      const auto mods = modifiers_of(*curr);
      const auto it = mods.find(part);
      if (it != mods.end() && child_of(*curr, it->second) != nullptr) {
        out.push_back(it->second);
        curr = child_of(*curr, it->second);
      }
    }
    out.push_back(part);
    curr = curr == nullptr ? nullptr : child_of(*curr, part);
  }
  return join(out);
}

StateDict get_model_state_dict(const torch::nn::Module& module, const StateDictOptions& options,
                               const ParamLayouts& layouts) {
  std::vector<Slot> all;
  slots(module, "", &all);
  check_layout_keys(module, all, layouts, "get_model_state_dict");
  StateDict sd;
  for (const auto& s : all) {
    if (options.ignore_frozen_params && s.frozen) continue;
    const at::Tensor t = s.tensor.detach();
    const auto layout = layouts.find(s.path);
    if (layout == layouts.end()) {
      sd.insert(s.path, t);
    } else {
      try {
        sd.insert(s.path, DTensor(t, layout->second.mesh, layout->second.placements,
                                  layout->second.global_shape));
      } catch (const ShardingError& e) {
        // Said with the parameter whose layout does not fit what it holds.
        throw ShardingError("get_model_state_dict: the layout of '" + s.path + "': " + e.what());
      }
    }
  }
  run_save_hooks(module, "", sd);
  if (options.full_state_dict) {
    for (std::size_t i = 0; i < sd.size(); ++i) {
      StateValue& v = sd.value(i);
      if (v.is<DTensor>()) {
        const DTensor& d = v.as<DTensor>();
        // Outside the DTensor's mesh: as gather_state_dict (and PyTorch) give it, the empty
        // local tensor; the mesh's ranks gather among themselves.
        if (!d.mesh()->contains(d.mesh()->my_rank())) {
          v = d.local().defined() ? d.local() : at::empty({0});
        } else {
          v = d.full_tensor();
        }
      }
      if (v.is<ShardedTensor>()) v = v.as<ShardedTensor>().full_tensor();
    }
  }
  if (options.cpu_offload) {
    if (options.full_state_dict && has_context() && current_context()->rank() != 0) {
      return StateDict();
    }
    StateValue tree(std::move(sd));
    detail::offload_to_cpu(tree);
    sd = std::move(tree.as<StateDict>());
  }
  return sd;
}

LoadResult set_model_state_dict(torch::nn::Module& module, const StateDict& state_dict,
                                const StateDictOptions& options, const ParamLayouts& layouts) {
  StateDict sd = options.broadcast_from_rank0 ? broadcast_state_dict(state_dict) : state_dict;
  run_load_hooks(module, "", sd);

  std::vector<Slot> all;
  slots(module, "", &all);
  check_layout_keys(module, all, layouts, "set_model_state_dict");
  std::map<std::string, std::string> key_of_path;
  LoadResult result;
  std::map<std::string, const Slot*> by_path;
  for (const auto& s : all) {
    if (!(options.ignore_frozen_params && s.frozen)) by_path[s.path] = &s;
  }
  for (const auto& key : sd.keys()) {
    const std::string path = path_of(module, key);
    if (by_path.count(path) != 0) {
      key_of_path[path] = key;
    } else {
      result.unexpected_keys.push_back(key);
    }
  }
  for (const auto& s : all) {
    if (by_path.count(s.path) != 0 && key_of_path.count(s.path) == 0) {
      result.missing_keys.push_back(fqn_of(module, s.path));
    }
  }
  if (options.strict && (!result.missing_keys.empty() || !result.unexpected_keys.empty())) {
    std::ostringstream os;
    os << "Error(s) in loading state_dict:";
    for (const auto* list : {&result.missing_keys, &result.unexpected_keys}) {
      if (list->empty()) continue;
      os << (list == &result.missing_keys ? " Missing key(s) in state_dict: "
                                          : " Unexpected key(s) in state_dict: ");
      for (std::size_t i = 0; i < list->size(); ++i) {
        os << (i ? ", " : "") << '"' << (*list)[i] << '"';
      }
      os << '.';
    }
    throw StateDictError(os.str());
  }

  torch::NoGradGuard no_grad;
  for (const auto& s : all) {
    const auto k = key_of_path.find(s.path);
    if (k == key_of_path.end()) continue;
    const std::string& key = k->second;
    const StateValue& v = sd.at(key);
    const auto layout = layouts.find(s.path);
    const at::Tensor src =
        detail::tensor_for_parameter(v, layout == layouts.end() ? nullptr : &layout->second, key);
    if (!src.defined()) {
      throw StateDictError("'" + key + "' holds a " + std::string(v.type_name()) +
                           ", not a tensor");
    }
    if (src.sizes() != s.tensor.sizes()) {
      throw StateDictError("size mismatch for " + key + ": copying a param with shape " +
                           detail::shape_text(src.sizes()) +
                           " from checkpoint, the shape in current model is " +
                           detail::shape_text(s.tensor.sizes()));
    }
    if (src.scalar_type() != s.tensor.scalar_type()) {
      throw StateDictError("dtype mismatch for " + key + ": the checkpoint holds " +
                           c10::toString(src.scalar_type()) + ", the model " +
                           c10::toString(s.tensor.scalar_type()));
    }
    at::Tensor target = s.tensor;
    target.copy_(src);
  }
  return result;
}

}  // namespace c10dtest
