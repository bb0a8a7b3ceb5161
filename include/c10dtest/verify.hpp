// Verifying sharded state dicts against local references: PyTorch's VerifyStateDictMixin for C++,
// comparing real values (model and optimizer) with assert_close tolerances and diagnostics that
// name the key, the ranks, the shard, the shape, the dtype and the largest difference.
//
//   class CheckpointTest : public c10dtest::DistributedTest,
//                          public c10dtest::VerifyStateDictMixin {};
//
//   TEST_F(CheckpointTest, ShardedModelMatchesLocal) {
//     ...train `local` and `sharded` on the same data...
//     C10DTEST_EXPECT_STATE_DICT_MATCHES(get_model_state_dict(*local),
//                                        get_model_state_dict(*sharded, {}, layouts));
//     EXPECT_TRUE(verify_osd(*local, local_optim, sharded_osd));
//   }
//
// Every verification is collective over its context's world (VerifyOptions::context, by default
// the runner's world): all ranks call it, in the same order, and all get the same verdict and the
// same message. Two strategies give identical answers:
// - shard-local (the default when every rank passes a reference): each rank compares its own
//   shards with the matching slices of its reference; one small exchange of findings follows.
//   No tensor data moves.
// - gather (the default when only some ranks pass a reference, e.g. rank 0 holds the local model
//   and the others pass an empty dict): every rank's pieces travel to the lowest rank holding a
//   reference, in batches, and are compared there.
#pragma once

#include <gtest/gtest.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "c10dtest/compare.hpp"
#include "c10dtest/context.hpp"
#include "c10dtest/state_dict.hpp"

namespace c10dtest {

enum class VerifyStrategy {
  kAuto,        // shard-local if every rank holds a reference, else gather
  kShardLocal,  // every rank must hold the reference
  kGather,      // to the lowest rank holding a reference
};

// "auto", "shard-local", "gather"; parse_ throws ConfigError naming the accepted values.
const char* to_string(VerifyStrategy strategy);
VerifyStrategy parse_verify_strategy(const std::string& name);

struct VerifyOptions {
  // Tolerances, NaN handling, dtype checking and the closeness rule, as for compare_tensors.
  CompareOptions compare;
  // Plain values (bool, int, float, and lists of them). By default they match as exact values:
  // an int and a float of the same value match (1 and 1.0, as in Python), NaN matches NaN, and
  // a bool matches only a bool (a flag that became a count is worth a failure). When true, as
  // PyTorch's TestCase.assertEqual in _verify_msd/_verify_osd: a bool against a number compares
  // truth values (True matches 3), and unless both are integers, numbers may differ by
  // 1e-5 + 1.3e-6 * |dist value| (float32's assert_close tolerances: PyTorch compares a Python
  // float as the default dtype).
  bool python_numbers = false;
  // kAuto takes the run's --c10dtest_verify_strategy (C10DTEST_VERIFY_STRATEGY) when set.
  VerifyStrategy strategy = VerifyStrategy::kAuto;
  // As StateDictOptions::ignore_frozen_params: keys in `frozen_keys` may be missing from the
  // distributed dict. Values that are present are still compared.
  bool ignore_frozen_params = false;
  // FQNs of frozen parameters (VerifyStateDictMixin::verify_msd(model, ...) fills this in from
  // the model; elsewhere give them, e.g. frozen_keys_of(model)). A state dict alone
  // cannot tell a frozen parameter from a buffer: both are saved detached.
  std::vector<std::string> frozen_keys;
  // A device difference between a reference and a distributed value fails the key (else values
  // on different devices are compared on CPU).
  bool check_device = false;
  // Only these ranks' dicts are compared with the reference; the others must pass an empty dict
  // (full_state_dict with cpu_offload leaves the whole dict on rank 0 and nothing elsewhere).
  std::optional<std::vector<int>> ranks;
  // Keys reported in full; the rest are counted and named (up to 20 names).
  std::size_t max_reported_keys = 10;
  // Gather strategy: bytes a rank sends per batch (bounds the receiving rank's memory to about
  // world size times this).
  std::int64_t gather_batch_bytes = std::int64_t{64} << 20;
  // The ranks that verify together (context.hpp): by default current_context() (the runner's
  // world in a test binary), else this process alone.
  ContextPtr context;

  // The verdicts of PyTorch's VerifyStateDictMixin, for porting its tests: tensors compared as
  // torch.allclose(reference, dist) (compare = torch_allclose()), plain values as its
  // assertEqual (python_numbers). What still differs (and why) is in docs/api.md.
  static VerifyOptions like_pytorch();
};

// Collective over the world. Compares every value of `dist` with the value under the same key in
// `reference` (full tensors and plain values; pass an empty dict on ranks that hold none). Tensors
// of `dist` may be plain (each rank holds the whole tensor), DTensors (any mesh and placements;
// replicas are all checked) or ShardedTensors (whose shards must tile the tensor). Nested dicts and
// lists are walked (keys "state.l1.weight.exp_avg", "param_groups.0.lr"). Missing and unexpected
// keys, shape, dtype and type differences are failures naming the key and the ranks concerned.
::testing::AssertionResult verify_state_dict(const StateDict& reference, const StateDict& dist,
                                             const VerifyOptions& options = {});

// One value (a DTensor, ShardedTensor or tensor) against a full reference tensor. Collective.
::testing::AssertionResult verify_tensor(const at::Tensor& reference, const StateValue& dist,
                                         const VerifyOptions& options = {},
                                         const std::string& key = "tensor");

// FQNs of `model`'s parameters with requires_grad == false (after FQN modifiers).
std::vector<std::string> frozen_keys_of(const torch::nn::Module& model);

// The optimizer state dict of `model`/`optimizer` in the form verify_osd compares: keyed by FQN,
// each param group's "params" sorted. `osd` may come from get_optimizer_state_dict (FQN keys) or
// use PyTorch's parameter ids: state keys "0", "1", ... and integer "params", where id i is the
// i-th parameter of the optimizer's param groups chained. Throws StateDictError naming an id or
// FQN that does not belong to the model.
StateDict canonical_optimizer_state_dict(const torch::nn::Module& model,
                                         const torch::optim::Optimizer& optimizer,
                                         const StateDict& osd);

// A PyTorch optimizer's state dict (optimizer.state_dict() saved by torch.save and read with
// read_state_dict) as the LibTorch optimizer `optimizer` of `model` holds the same state, so that
// verify_osd can compare a C++ optimizer with a Python one:
// - parameter ids become FQNs, as canonical_optimizer_state_dict does;
// - a `step` saved as a one-element tensor (PyTorch 2.x) becomes an int, as LibTorch keeps it,
//   when it holds a whole number (else it stays a tensor and verify_osd reports it);
// - a param-group entry that `optimizer`'s groups have not (PyTorch's foreach, maximize,
//   capturable, differentiable, fused, decoupled_weight_decay) is dropped when it holds
//   PyTorch's default (None or False), the behaviour LibTorch's optimizers have. Any other value
//   (maximize=True: a LibTorch optimizer cannot do that) and any other entry stays, and
//   verify_osd names it.
// Throws StateDictError as canonical_optimizer_state_dict. Not collective.
StateDict from_pytorch_optimizer_state_dict(const torch::nn::Module& model,
                                            const torch::optim::Optimizer& optimizer,
                                            const StateDict& osd);

// The mixin: inherit it beside DistributedTest, as PyTorch's tests inherit VerifyStateDictMixin
// beside DTensorTestBase. Each check is collective and returns an AssertionResult.
class VerifyStateDictMixin {
 public:
  virtual ~VerifyStateDictMixin() = default;

 protected:
  // Defaults for the checks below; a test may change them.
  VerifyOptions& verify_options() { return verify_options_; }

  // PyTorch's _compare_tensor: a full reference tensor against a (distributed) value.
  ::testing::AssertionResult compare_tensor(const at::Tensor& orig, const StateValue& dist);
  ::testing::AssertionResult compare_tensor(const at::Tensor& orig, const StateValue& dist,
                                            const VerifyOptions& options);
  // The same, naming the value `key` in the message (else it is called 'tensor').
  ::testing::AssertionResult compare_tensor(const at::Tensor& orig, const StateValue& dist,
                                            const std::string& key);
  ::testing::AssertionResult compare_tensor(const at::Tensor& orig, const StateValue& dist,
                                            const VerifyOptions& options, const std::string& key);

  // _verify_msd: the reference model state dict `msd` against `dist_msd`. With
  // options.ignore_frozen_params, keys of options.frozen_keys may be missing.
  ::testing::AssertionResult verify_msd(const StateDict& msd, const StateDict& dist_msd);
  ::testing::AssertionResult verify_msd(const StateDict& msd, const StateDict& dist_msd,
                                        const VerifyOptions& options);
  // The same, taking the reference from `model` (which also tells which keys are frozen).
  ::testing::AssertionResult verify_msd(const torch::nn::Module& model, const StateDict& dist_msd,
                                        const VerifyOptions& options);

  // _verify_osd, comparing the distributed values for real: `osd` (the reference optimizer's
  // state, by FQN or by parameter id, see canonical_optimizer_state_dict) against `dist_osd`:
  // every state value, and param_groups (hyperparameters exactly, "params" as sets of FQNs).
  // As in PyTorch, a dist_osd with more groups than the reference is compared against one group
  // holding all their parameters, but here only when their hyperparameters agree.
  ::testing::AssertionResult verify_osd(const torch::nn::Module& model,
                                        const torch::optim::Optimizer& optim,
                                        const StateDict& osd, const StateDict& dist_osd);
  ::testing::AssertionResult verify_osd(const torch::nn::Module& model,
                                        const torch::optim::Optimizer& optim,
                                        const StateDict& osd, const StateDict& dist_osd,
                                        const VerifyOptions& options);
  // `osd` taken from `optim` itself.
  ::testing::AssertionResult verify_osd(const torch::nn::Module& model,
                                        const torch::optim::Optimizer& optim,
                                        const StateDict& dist_osd);

  // _verify_osd_by_load: gathers `dist_osd` (collective), loads it into `new_optim` (an optimizer
  // over `model`'s parameters) and compares the state of `optim` and `new_optim`.
  ::testing::AssertionResult verify_osd_by_load(const torch::nn::Module& model,
                                                const torch::optim::Optimizer& optim,
                                                torch::optim::Optimizer& new_optim,
                                                const StateDict& dist_osd);

 private:
  VerifyOptions verify_options_;
};

namespace detail {
::testing::AssertionResult verify_osd_impl(const torch::nn::Module& model,
                                           const torch::optim::Optimizer& optim,
                                           const StateDict& osd, const StateDict& dist_osd,
                                           const VerifyOptions& options);

class StateDictMatcher {
 public:
  using is_gtest_matcher = void;
  StateDictMatcher(const StateDict& reference, VerifyOptions options)
      : reference_(&reference), options_(std::move(options)) {}
  bool MatchAndExplain(const StateDict& dist, std::ostream* listener) const;
  void DescribeTo(std::ostream* os) const;
  void DescribeNegationTo(std::ostream* os) const;

 private:
  const StateDict* reference_;
  VerifyOptions options_;
};

class TensorMatcher {
 public:
  using is_gtest_matcher = void;
  TensorMatcher(const at::Tensor& reference, VerifyOptions options, std::string key)
      : reference_(reference), options_(std::move(options)), key_(std::move(key)) {}
  bool MatchAndExplain(const StateValue& dist, std::ostream* listener) const;
  bool MatchAndExplain(const at::Tensor& dist, std::ostream* listener) const;
  void DescribeTo(std::ostream* os) const;
  void DescribeNegationTo(std::ostream* os) const;

 private:
  at::Tensor reference_;
  VerifyOptions options_;
  std::string key_;
};
}  // namespace detail

// gMock matchers (collective, like verify_state_dict; the reference must outlive the matcher).
// They need no gMock header here; EXPECT_THAT does (#include <gmock/gmock.h>, link GTest::gmock):
//   EXPECT_THAT(dist_msd, c10dtest::StateDictMatches(msd));
//   EXPECT_THAT(dtensor_value, c10dtest::TensorMatches(full_reference));
//   EXPECT_THAT(dtensor_value, c10dtest::TensorMatches(full_reference, {}, "l1.weight"));
inline detail::StateDictMatcher StateDictMatches(const StateDict& reference,
                                                 VerifyOptions options = {}) {
  return detail::StateDictMatcher(reference, std::move(options));
}
// `key` names the value in the message.
inline detail::TensorMatcher TensorMatches(const at::Tensor& reference,
                                           VerifyOptions options = {},
                                           std::string key = "tensor") {
  return detail::TensorMatcher(reference, std::move(options), std::move(key));
}

namespace detail {
// For the shims below (gtest's predicate-format protocol).
inline VerifyOptions verify_options_or_default() { return {}; }
inline const VerifyOptions& verify_options_or_default(const VerifyOptions& options) {
  return options;
}
inline ::testing::AssertionResult format_verify_state_dict(const char*, const char*, const char*,
                                                           const StateDict& reference,
                                                           const StateDict& dist,
                                                           const VerifyOptions& options) {
  return verify_state_dict(reference, dist, options);
}
// The value is named in the message by the expression that gives it.
inline ::testing::AssertionResult format_verify_tensor(const char*, const char* dist_text,
                                                       const char*, const at::Tensor& reference,
                                                       const StateValue& dist,
                                                       const VerifyOptions& options) {
  return verify_tensor(reference, dist, options, dist_text);
}
}  // namespace detail

// gtest prints matched values: a summary of shapes and dtypes, never tensor values.
void PrintTo(const StateDict& sd, std::ostream* os);
void PrintTo(const StateValue& v, std::ostream* os);

}  // namespace c10dtest

// One-line shims (collective: every rank must reach them). Optional third argument: VerifyOptions.
// gtest's public EXPECT_PRED_FORMAT3 prints the verifier's message as it is.
#define C10DTEST_EXPECT_STATE_DICT_MATCHES(reference, dist, ...)                         \
  EXPECT_PRED_FORMAT3(::c10dtest::detail::format_verify_state_dict, reference, dist,     \
                      ::c10dtest::detail::verify_options_or_default(__VA_ARGS__))
#define C10DTEST_ASSERT_STATE_DICT_MATCHES(reference, dist, ...)                         \
  ASSERT_PRED_FORMAT3(::c10dtest::detail::format_verify_state_dict, reference, dist,     \
                      ::c10dtest::detail::verify_options_or_default(__VA_ARGS__))
#define C10DTEST_EXPECT_TENSOR_MATCHES(reference, dist, ...)                             \
  EXPECT_PRED_FORMAT3(::c10dtest::detail::format_verify_tensor, reference, dist,         \
                      ::c10dtest::detail::verify_options_or_default(__VA_ARGS__))
#define C10DTEST_ASSERT_TENSOR_MATCHES(reference, dist, ...)                             \
  ASSERT_PRED_FORMAT3(::c10dtest::detail::format_verify_tensor, reference, dist,         \
                      ::c10dtest::detail::verify_options_or_default(__VA_ARGS__))
