// Reference trainers (target c10dtest::testing): the same model trained plainly on one rank and
// data- or tensor-parallel over the world, so that a test can train both side by side on the same
// batches and compare their (gathered) state dicts.
//
//   namespace ct = c10dtest::testing;
//   at::manual_seed(7);
//   ct::DataParallelTrainer local(ct::composite_param_model_spec(), ct::Parallelism::Local,
//                                 ct::adam(1e-3));
//   at::manual_seed(7);
//   ct::DataParallelTrainer fsdp(ct::composite_param_model_spec(), ct::Parallelism::FSDP,
//                                ct::adam(1e-3));
//   const at::Tensor x = at::rand({8, 100});  // the same on every rank
//   local.step(x);
//   fsdp.step(x);
//   auto full = c10dtest::gather_state_dict(fsdp.model_state_dict());  // ~ local.model_state_dict()
//
// Constructors of the parallel kinds and step() are collective over the world: every rank makes
// the same calls in the same order. Build trainers inside a test (they hold process groups).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/optim/optimizer.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "c10dtest/comm.hpp"
#include "c10dtest/device_mesh.hpp"
#include "c10dtest/model_state_dict.hpp"
#include "c10dtest/state_dict.hpp"

namespace c10dtest::testing {

// How to build a model and run it. `make` is called once per trainer; after the same seed it
// must give identical models on every rank. `forward` maps a batch (rows on dim 0) to an output
// whose sum is the loss.
struct ModelSpec {
  std::function<std::shared_ptr<torch::nn::Module>()> make;
  std::function<at::Tensor(torch::nn::Module&, const at::Tensor& input)> forward;
};

// CompositeParamModel; input float [batch, 100].
ModelSpec composite_param_model_spec();
// TiedEmbeddingModel(vocab, dim) (lm_head.weight is embedding.weight); input token ids int64
// [batch, seq] in [0, vocab).
ModelSpec tied_embedding_model_spec(std::int64_t vocab, std::int64_t dim);

// The module's parameters in named_parameters() order, each tensor once (a tied parameter is
// listed under its first name only). Optimizers are built over these.
std::vector<at::Tensor> unique_parameters(const torch::nn::Module& module);

// Builds the optimizer over a module's parameters; the module holds what the trainer trains (for
// sharded kinds: the local pieces). Custom factories may make several param groups, or empty ones.
using OptimizerFactory =
    std::function<std::unique_ptr<torch::optim::Optimizer>(torch::nn::Module&)>;

// One param group over unique_parameters().
OptimizerFactory sgd(double lr, double momentum = 0.9);
OptimizerFactory adam(double lr);
OptimizerFactory adamw(double lr, double weight_decay = 0.01);

enum class Parallelism {
  // The reference: the whole batch on this rank, no communication, no layouts.
  Local,
  // Parameters replicated: layout [Replicate] over a 1-D mesh of the world; gradients all-reduced.
  DDP,
  // Every parameter sharded on dim 0 ([Shard(0)] over a 1-D world mesh, torch.chunk pieces, maybe
  // empty; 0-D parameters stay [Replicate]); gathered for forward and backward, gradients reduced
  // and narrowed to the local piece.
  FSDP,
  // A (2, W/2) mesh with [Replicate, Shard(0)]: FSDP within each row, replicas across rows.
  HSDP,
};

// "Local", "DDP", "FSDP", "HSDP".
const char* to_string(Parallelism kind);

// What both trainers share: the trained module, its optimizer, the mesh and the layouts, and
// state-dict access through them.
class TrainedModel {
 public:
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  const torch::optim::Optimizer& optimizer() const { return *optimizer_; }
  // The parallel mesh (nullptr for the local reference).
  const std::shared_ptr<const DeviceMesh>& mesh() const { return mesh_; }
  // Layouts of every parameter path (a tied parameter under each of its names); empty for the
  // local reference.
  const ParamLayouts& layouts() const { return layouts_; }

  // get_model_state_dict / get_optimizer_state_dict with layouts(): DTensor values for the
  // parallel kinds (collective with full_state_dict).
  StateDict model_state_dict(const StateDictOptions& options = {}) const;
  StateDict optimizer_state_dict(const StateDictOptions& options = {}) const;
  // set_model_state_dict / set_optimizer_state_dict with layouts().
  LoadResult load_model_state_dict(const StateDict& sd, const StateDictOptions& options = {});
  void load_optimizer_state_dict(const StateDict& osd, const StateDictOptions& options = {});

 protected:
  std::shared_ptr<torch::nn::Module> module_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::shared_ptr<const DeviceMesh> mesh_;
  ParamLayouts layouts_;
};

// Data-parallel training of a ModelSpec.
class DataParallelTrainer : public TrainedModel {
 public:
  // Builds the model with spec.make(), moves it to `device`, lays it out for `kind` and builds
  // the optimizer over the laid-out parameters (so its state has the parameters' local shapes).
  // Collective except for Local. ConfigError for HSDP on an odd world size. Pass the test's
  // device() to train on a GPU (a CPU reference beside it is verified across devices).
  DataParallelTrainer(ModelSpec spec, Parallelism kind, OptimizerFactory make_optimizer,
                      c10::Device device = c10::Device(c10::DeviceType::CPU));

  // One step on the global batch `input` (the same on every rank, on any device: it is moved to
  // the trainer's). Local runs all rows; the other
  // kinds give data-parallel rank r (the world rank) rows torch.chunk(input, W)[r]. The loss is
  // forward(...).sum(); gradients are summed over ranks, so the step equals the Local step on the
  // whole batch. A parameter gets a gradient when it got one on any rank; frozen parameters
  // (requires_grad false) get none and are not stepped.
  void step(const at::Tensor& input);

  Parallelism kind() const { return kind_; }
  c10::Device device() const { return device_; }
  // The module; for FSDP and HSDP its parameters hold this rank's pieces (between steps).
  torch::nn::Module& model() { return *module_; }
  const torch::nn::Module& model() const { return *module_; }

 private:
  void unshard();
  void reshard_and_reduce_gradients();

  ModelSpec spec_;
  Parallelism kind_;
  c10::Device device_;
  // Unique parameters, each with its first path, and their local pieces while unsharded.
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<at::Tensor> saved_pieces_;
};

// Linear(in, hidden) `fc`, ReLU, Linear(hidden, out) `fc1`. With tp_group set, the parameters
// hold tensor-parallel pieces (fc colwise: weight and bias Shard(0); fc1 rowwise: weight Shard(1),
// bias Replicate) and forward sums fc1's partial products over the group: an all-reduce that
// backward passes through unchanged (every rank computes the same loss).
class TpMlpImpl : public torch::nn::Module {
 public:
  TpMlpImpl(std::int64_t in, std::int64_t hidden, std::int64_t out);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear fc{nullptr};
  torch::nn::Linear fc1{nullptr};
  // Unset: the plain (reference) MLP.
  ProcessGroupPtr tp_group;
};
TORCH_MODULE(TpMlp);

// Tensor-parallel training of a TpMlp over a 1-D world mesh; every rank runs the whole batch.
class TensorParallelTrainer : public TrainedModel {
 public:
  // `local`: the reference, a plain TpMlp (no communication, no layouts). Otherwise the MLP is
  // built, split into this rank's pieces (collective: the mesh) and the optimizer is built over
  // the pieces. Build the reference and the parallel trainer after the same seed.
  TensorParallelTrainer(std::int64_t in, std::int64_t hidden, std::int64_t out,
                        OptimizerFactory make_optimizer, bool local);

  // One step on `input` [batch, in] (the same on every rank): loss = forward(input).sum().
  void step(const at::Tensor& input);

  bool local() const { return !mesh_; }
  // Layouts: "fc.weight" [Shard(0)], "fc.bias" [Shard(0)], "fc1.weight" [Shard(1)], "fc1.bias"
  // [Replicate].
  TpMlp& model() { return model_; }
  const TpMlp& model() const { return model_; }

 private:
  TpMlp model_{nullptr};
};

}  // namespace c10dtest::testing
