// Reference modules from PyTorch's distributed state-dict tests, in C++ (target
// c10dtest::testing). Build them on every rank after the same seed and they are identical.
//
//   auto model = c10dtest::testing::CompositeParamModel();   // 15 parameters + 1 buffer
//   auto out = model->forward(at::rand({8, 100}));
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "c10dtest/model_state_dict.hpp"

namespace c10dtest::testing {

// embedding (vocab x dim) and fusion_embedding (fusion_vocab x dim).
class FusionEmbeddingImpl : public torch::nn::Module {
 public:
  FusionEmbeddingImpl(std::int64_t vocab_size, std::int64_t fusion_vocab_size,
                      std::int64_t embed_dim);
  torch::nn::Embedding embedding{nullptr};
  torch::nn::Embedding fusion_embedding{nullptr};
};
TORCH_MODULE(FusionEmbedding);

// A state-dict hook saves "<prefix>embedding.weight" as "<prefix>weight"; a load pre-hook maps
// it back. Keys: "weight", "fusion_embedding.weight".
class FusionEmbeddingWithHookImpl : public FusionEmbeddingImpl, public StateDictHooks {
 public:
  using FusionEmbeddingImpl::FusionEmbeddingImpl;
  void state_dict_hook(StateDict& sd, const std::string& prefix) const override;
  void load_state_dict_pre_hook(StateDict& sd, const std::string& prefix) const override;
};
TORCH_MODULE(FusionEmbeddingWithHook);

// The same hooks, plus fqn_modifiers() {"weight": "embedding"}.
class FusionEmbeddingWithModifierImpl : public FusionEmbeddingWithHookImpl {
 public:
  using FusionEmbeddingWithHookImpl::FusionEmbeddingWithHookImpl;
  std::map<std::string, std::string> fqn_modifiers() const override;
};
TORCH_MODULE(FusionEmbeddingWithModifier);

// l1 = Linear(100, 100); seq = Sequential(ReLU, Linear(100, 100), ReLU); l2 = Linear(100, 100).
class UnitModuleImpl : public torch::nn::Module {
 public:
  UnitModuleImpl();
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear l1{nullptr};
  torch::nn::Sequential seq{nullptr};
  torch::nn::Linear l2{nullptr};
};
TORCH_MODULE(UnitModule);

// l = Linear(100, 100); u1, u2 = UnitModule; p = a 100 x 100 parameter (15 parameters), and a
// 100 x 100 buffer "buffer". forward(x) = u2(u1(l(x))) @ p.
class CompositeParamModelImpl : public torch::nn::Module {
 public:
  CompositeParamModelImpl();
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear l{nullptr};
  UnitModule u1{nullptr};
  UnitModule u2{nullptr};
  at::Tensor p;
  at::Tensor buffer;
};
TORCH_MODULE(CompositeParamModel);

// A bias-free linear layer over a weight it is given (and shares): y = x W^T.
class SharedWeightLinearImpl : public torch::nn::Module {
 public:
  explicit SharedWeightLinearImpl(at::Tensor weight);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;
};
TORCH_MODULE(SharedWeightLinear);

// A language-model head tied to its embedding: lm_head.weight is embedding.weight (one tensor,
// two names).
class TiedEmbeddingModelImpl : public torch::nn::Module {
 public:
  TiedEmbeddingModelImpl(std::int64_t vocab_size, std::int64_t embed_dim);
  // Token ids [batch, seq] -> logits [batch, seq, vocab].
  at::Tensor forward(const at::Tensor& tokens);
  torch::nn::Embedding embedding{nullptr};
  SharedWeightLinear lm_head{nullptr};
};
TORCH_MODULE(TiedEmbeddingModel);

}  // namespace c10dtest::testing
