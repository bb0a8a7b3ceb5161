#include "c10dtest/testing/modules.hpp"

#include <torch/nn/modules/activation.h>

namespace c10dtest::testing {

FusionEmbeddingImpl::FusionEmbeddingImpl(std::int64_t vocab_size,
                                         std::int64_t fusion_vocab_size,
                                         std::int64_t embed_dim) {
  embedding = register_module("embedding", torch::nn::Embedding(vocab_size, embed_dim));
  fusion_embedding =
      register_module("fusion_embedding", torch::nn::Embedding(fusion_vocab_size, embed_dim));
}

void FusionEmbeddingWithHookImpl::state_dict_hook(StateDict& sd, const std::string& prefix) const {
  sd.rename(prefix + "embedding.weight", prefix + "weight");
}

void FusionEmbeddingWithHookImpl::load_state_dict_pre_hook(StateDict& sd,
                                                           const std::string& prefix) const {
  if (sd.contains(prefix + "weight")) sd.rename(prefix + "weight", prefix + "embedding.weight");
}

std::map<std::string, std::string> FusionEmbeddingWithModifierImpl::fqn_modifiers() const {
  return {{"weight", "embedding"}};
}

UnitModuleImpl::UnitModuleImpl() {
  l1 = register_module("l1", torch::nn::Linear(100, 100));
  seq = register_module("seq", torch::nn::Sequential(torch::nn::ReLU(), torch::nn::Linear(100, 100),
                                                     torch::nn::ReLU()));
  l2 = register_module("l2", torch::nn::Linear(100, 100));
}

at::Tensor UnitModuleImpl::forward(const at::Tensor& x) {
  return l2->forward(seq->forward(l1->forward(x)));
}

CompositeParamModelImpl::CompositeParamModelImpl() {
  l = register_module("l", torch::nn::Linear(100, 100));
  u1 = register_module("u1", UnitModule());
  u2 = register_module("u2", UnitModule());
  p = register_parameter("p", at::randn({100, 100}));
  buffer = register_buffer("buffer", at::randn({100, 100}));
}

at::Tensor CompositeParamModelImpl::forward(const at::Tensor& x) {
  return at::mm(u2->forward(u1->forward(l->forward(x))), p);
}

SharedWeightLinearImpl::SharedWeightLinearImpl(at::Tensor w) {
  weight = register_parameter("weight", std::move(w));
}

at::Tensor SharedWeightLinearImpl::forward(const at::Tensor& x) { return at::matmul(x, weight.t()); }

TiedEmbeddingModelImpl::TiedEmbeddingModelImpl(std::int64_t vocab_size, std::int64_t embed_dim) {
  embedding = register_module("embedding", torch::nn::Embedding(vocab_size, embed_dim));
  lm_head = register_module("lm_head", SharedWeightLinear(embedding->weight));
}

at::Tensor TiedEmbeddingModelImpl::forward(const at::Tensor& tokens) {
  return lm_head->forward(embedding->forward(tokens));
}

}  // namespace c10dtest::testing
