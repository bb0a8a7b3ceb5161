#include "c10dtest/testing/trainers.hpp"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "c10dtest/distributed_state_dict.hpp"
#include "c10dtest/dtensor.hpp"
#include "c10dtest/error.hpp"
#include "c10dtest/optimizer_state_dict.hpp"
#include "c10dtest/testing/modules.hpp"
#include "c10dtest/context.hpp"
#include "common/tensor.hpp"

namespace c10dtest::testing {

namespace {

namespace optim = torch::optim;

// Sums partial products over a group in forward; backward passes the gradient through, since
// every rank computes the same loss from the sum.
struct AllReduceSum : torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* /*ctx*/, const at::Tensor& partial,
                            const ProcessGroupPtr& group) {
    std::vector<at::Tensor> sum{partial.contiguous().clone()};
    group->allreduce(sum)->wait();
    return sum[0];
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* /*ctx*/,
                                                 torch::autograd::variable_list grads) {
    return {grads[0], at::Tensor()};
  }
};

// Unique parameters of `module` with their first path.
std::vector<std::pair<std::string, at::Tensor>> unique_named_parameters(
    const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::set<const void*> seen;
  for (const auto& p : module.named_parameters()) {
    if (seen.insert(p.value().unsafeGetTensorImpl()).second) out.emplace_back(p.key(), p.value());
  }
  return out;
}

// This rank's piece of `full` under `layout`.
at::Tensor local_piece(const at::Tensor& full, const ParamLayout& layout) {
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> offset;
  detail::local_extent(layout.global_shape, layout.placements, *layout.mesh,
                       layout.mesh->coordinate_of(layout.mesh->my_rank()), &shape, &offset);
  return detail::slice_block(full, shape, offset);
}

// Sums `tensors` (replaced by the sums) and `flags` over `group`: one all-reduce per dtype, the
// flags riding with the first dtype (small counts are exact in any floating type).
void all_reduce_coalesced(const ProcessGroupPtr& group, std::vector<at::Tensor>& tensors,
                          std::vector<double>& flags, c10::Device device) {
  if (group->getSize() == 1) return;
  std::vector<at::ScalarType> dtypes;
  for (const auto& t : tensors) {
    if (std::find(dtypes.begin(), dtypes.end(), t.scalar_type()) == dtypes.end()) {
      dtypes.push_back(t.scalar_type());
    }
  }
  if (dtypes.empty() && !flags.empty()) dtypes.push_back(at::kDouble);
  for (std::size_t b = 0; b < dtypes.size(); ++b) {
    std::vector<at::Tensor> parts;
    std::vector<std::size_t> members;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      if (tensors[i].scalar_type() != dtypes[b]) continue;
      members.push_back(i);
      parts.push_back(tensors[i].reshape({-1}));
    }
    const bool with_flags = b == 0 && !flags.empty();
    if (with_flags) {
      // On the trainer's device on every rank (Gloo runs CPU and CUDA tensors differently).
      parts.push_back(at::tensor(flags, at::TensorOptions().dtype(at::kDouble))
                          .to(device, dtypes[b]));
    }
    std::vector<at::Tensor> flat{at::cat(parts)};
    group->allreduce(flat)->wait();
    std::int64_t at_elem = 0;
    for (std::size_t i : members) {
      const std::int64_t n = tensors[i].numel();
      tensors[i] = flat[0].narrow(0, at_elem, n).view(tensors[i].sizes()).clone();
      at_elem += n;
    }
    if (with_flags) {
      const at::Tensor f = flat[0].narrow(0, at_elem, static_cast<std::int64_t>(flags.size()))
                               .to(at::kCPU, at::kDouble);
      for (std::size_t i = 0; i < flags.size(); ++i) {
        flags[i] = f[static_cast<std::int64_t>(i)].item<double>();
      }
    }
  }
}

void clear_gradients(const std::vector<at::Tensor>& params) {
  for (const auto& p : params) {
    at::Tensor param = p;
    if (param.grad().defined()) param.mutable_grad().reset();
  }
}

}  // namespace

ModelSpec composite_param_model_spec() {
  return {[] { return std::static_pointer_cast<torch::nn::Module>(CompositeParamModel().ptr()); },
          [](torch::nn::Module& m, const at::Tensor& x) {
            return dynamic_cast<CompositeParamModelImpl&>(m).forward(x);
          }};
}

ModelSpec tied_embedding_model_spec(std::int64_t vocab, std::int64_t dim) {
  return {[vocab, dim] {
            return std::static_pointer_cast<torch::nn::Module>(
                TiedEmbeddingModel(vocab, dim).ptr());
          },
          [](torch::nn::Module& m, const at::Tensor& tokens) {
            return dynamic_cast<TiedEmbeddingModelImpl&>(m).forward(tokens);
          }};
}

std::vector<at::Tensor> unique_parameters(const torch::nn::Module& module) {
  std::vector<at::Tensor> out;
  for (auto& p : unique_named_parameters(module)) out.push_back(std::move(p.second));
  return out;
}

OptimizerFactory sgd(double lr, double momentum) {
  return [lr, momentum](torch::nn::Module& m) -> std::unique_ptr<optim::Optimizer> {
    return std::make_unique<optim::SGD>(unique_parameters(m),
                                        optim::SGDOptions(lr).momentum(momentum));
  };
}

OptimizerFactory adam(double lr) {
  return [lr](torch::nn::Module& m) -> std::unique_ptr<optim::Optimizer> {
    return std::make_unique<optim::Adam>(unique_parameters(m), optim::AdamOptions(lr));
  };
}

OptimizerFactory adamw(double lr, double weight_decay) {
  return [lr, weight_decay](torch::nn::Module& m) -> std::unique_ptr<optim::Optimizer> {
    return std::make_unique<optim::AdamW>(unique_parameters(m),
                                          optim::AdamWOptions(lr).weight_decay(weight_decay));
  };
}

const char* to_string(Parallelism kind) {
  switch (kind) {
    case Parallelism::Local: return "Local";
    case Parallelism::DDP: return "DDP";
    case Parallelism::FSDP: return "FSDP";
    case Parallelism::HSDP: return "HSDP";
  }
  return "?";
}

// ---- data parallel -----------------------------------------------------------------------------

DataParallelTrainer::DataParallelTrainer(ModelSpec spec, Parallelism kind,
                                         OptimizerFactory make_optimizer, c10::Device device)
    : spec_(std::move(spec)), kind_(kind), device_(device) {
  module_ = spec_.make();
  module_->to(device_);
  params_ = unique_named_parameters(*module_);
  if (kind_ != Parallelism::Local) {
    const std::int64_t world = current_context()->world_size();
    std::vector<Placement> sharded{Shard{0}};
    std::vector<Placement> replicated{Replicate{}};
    if (kind_ == Parallelism::HSDP) {
      if (world % 2 != 0) {
        throw ConfigError("DataParallelTrainer: HSDP needs an even world size for its (2, W/2) "
                          "mesh, have " + std::to_string(world));
      }
      mesh_ = DeviceMesh::create({2, world / 2});
      sharded = {Replicate{}, Shard{0}};
      replicated = {Replicate{}, Replicate{}};
    } else {
      mesh_ = DeviceMesh::create({world});
    }
    std::map<const void*, ParamLayout> by_impl;
    for (auto& [path, p] : params_) {
      const bool shard = kind_ != Parallelism::DDP && p.dim() > 0;
      ParamLayout layout{mesh_, shard ? sharded : replicated, p.sizes().vec()};
      if (shard) {
        torch::NoGradGuard no_grad;
        p.set_data(local_piece(p.detach(), layout).clone());
      }
      by_impl.emplace(p.unsafeGetTensorImpl(), layout);
    }
    // Every name of a tied parameter gets its layout.
    for (const auto& p : module_->named_parameters()) {
      layouts_[p.key()] = by_impl.at(p.value().unsafeGetTensorImpl());
    }
  }
  optimizer_ = make_optimizer(*module_);
}

void DataParallelTrainer::unshard() {
  StateDict pieces;
  for (const auto& [path, p] : params_) {
    const ParamLayout& l = layouts_.at(path);
    pieces.insert(path, DTensor(p.detach(), l.mesh, l.placements, l.global_shape));
  }
  const StateDict full = gather_state_dict(pieces);
  saved_pieces_.clear();
  torch::NoGradGuard no_grad;
  for (auto& [path, p] : params_) {
    saved_pieces_.push_back(p.detach());
    p.set_data(full.at(path).as<at::Tensor>().contiguous());
  }
}

void DataParallelTrainer::reshard_and_reduce_gradients() {
  const bool sharded = kind_ == Parallelism::FSDP || kind_ == Parallelism::HSDP;
  std::vector<std::size_t> trainable;
  std::vector<at::Tensor> grads;
  std::vector<double> flags;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].second;
    if (!p.requires_grad()) continue;
    trainable.push_back(i);
    grads.push_back(p.grad().defined() ? p.grad() : at::zeros_like(p));
    flags.push_back(p.grad().defined() ? 1.0 : 0.0);
  }
  // Within a row of the HSDP mesh (the shard group), else over the whole 1-D mesh.
  all_reduce_coalesced(mesh_->group(kind_ == Parallelism::HSDP ? 1 : 0), grads, flags, device_);
  if (sharded) {
    for (std::size_t k = 0; k < trainable.size(); ++k) {
      const auto& [path, p] = params_[trainable[k]];
      grads[k] = local_piece(grads[k], layouts_.at(path)).clone();
    }
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      at::Tensor p = params_[i].second;
      if (p.grad().defined()) p.mutable_grad().reset();
      p.set_data(saved_pieces_[i]);
    }
    saved_pieces_.clear();
  }
  // Across the HSDP replicas.
  if (kind_ == Parallelism::HSDP) all_reduce_coalesced(mesh_->group(0), grads, flags, device_);
  for (std::size_t k = 0; k < trainable.size(); ++k) {
    at::Tensor p = params_[trainable[k]].second;
    p.mutable_grad() = flags[k] > 0 ? grads[k] : at::Tensor();
  }
}

void DataParallelTrainer::step(const at::Tensor& input) {
  std::vector<at::Tensor> params;
  for (const auto& np : params_) params.push_back(np.second);
  clear_gradients(params);
  at::Tensor batch = input.to(device_);
  if (kind_ != Parallelism::Local) {
    const ChunkExtent rows = chunk_extent(input.size(0), mesh_->numel(),
                                          static_cast<std::int64_t>(mesh_->my_rank()));
    batch = batch.narrow(0, rows.offset, rows.length);
  }
  const bool sharded = kind_ == Parallelism::FSDP || kind_ == Parallelism::HSDP;
  if (sharded) unshard();
  try {
    const at::Tensor loss = spec_.forward(*module_, batch).sum();
    if (loss.requires_grad()) loss.backward();
  } catch (...) {
    // Leave the parameters holding their pieces.
    if (sharded) {
      torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < params_.size(); ++i) params_[i].second.set_data(saved_pieces_[i]);
      saved_pieces_.clear();
      clear_gradients(params);
    }
    throw;
  }
  if (kind_ != Parallelism::Local) reshard_and_reduce_gradients();
  optimizer_->step();
}

StateDict TrainedModel::model_state_dict(const StateDictOptions& options) const {
  return get_model_state_dict(*module_, options, layouts_);
}

StateDict TrainedModel::optimizer_state_dict(const StateDictOptions& options) const {
  return get_optimizer_state_dict(*module_, *optimizer_, options, layouts_);
}

LoadResult TrainedModel::load_model_state_dict(const StateDict& sd,
                                               const StateDictOptions& options) {
  return set_model_state_dict(*module_, sd, options, layouts_);
}

void TrainedModel::load_optimizer_state_dict(const StateDict& osd,
                                             const StateDictOptions& options) {
  set_optimizer_state_dict(*module_, *optimizer_, osd, options, layouts_);
}

// ---- tensor parallel ---------------------------------------------------------------------------

TpMlpImpl::TpMlpImpl(std::int64_t in, std::int64_t hidden, std::int64_t out) {
  fc = register_module("fc", torch::nn::Linear(in, hidden));
  fc1 = register_module("fc1", torch::nn::Linear(hidden, out));
}

at::Tensor TpMlpImpl::forward(const at::Tensor& x) {
  const at::Tensor h = at::relu(fc->forward(x));
  if (!tp_group) return fc1->forward(h);
  return AllReduceSum::apply(at::linear(h, fc1->weight), tp_group) + fc1->bias;
}

TensorParallelTrainer::TensorParallelTrainer(std::int64_t in, std::int64_t hidden,
                                             std::int64_t out, OptimizerFactory make_optimizer,
                                             bool local)
    : model_(in, hidden, out) {
  module_ = model_.ptr();
  if (!local) {
    mesh_ = DeviceMesh::create({current_context()->world_size()});
    layouts_["fc.weight"] = {mesh_, {Shard{0}}, {hidden, in}};
    layouts_["fc.bias"] = {mesh_, {Shard{0}}, {hidden}};
    layouts_["fc1.weight"] = {mesh_, {Shard{1}}, {out, hidden}};
    layouts_["fc1.bias"] = {mesh_, {Replicate{}}, {out}};
    torch::NoGradGuard no_grad;
    for (auto& p : model_->named_parameters()) {
      p.value().set_data(local_piece(p.value().detach(), layouts_.at(p.key())).clone());
    }
    model_->tp_group = mesh_->group(0);
  }
  optimizer_ = make_optimizer(*model_);
}

void TensorParallelTrainer::step(const at::Tensor& input) {
  clear_gradients(unique_parameters(*model_));
  const at::Tensor loss = model_->forward(input).sum();
  if (loss.requires_grad()) loss.backward();
  optimizer_->step();
}

}  // namespace c10dtest::testing
