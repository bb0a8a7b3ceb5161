// Tensor comparison for verification, with the tolerances of torch.testing.assert_close and
// diagnostics that name where the tensors differ and by how much, never printing them.
//
//   EXPECT_TRUE(c10dtest::compare_tensors(reference, shard, {}, {"l1.weight", rank(), {25, 0}}));
//   // key 'l1.weight' (rank 2, offsets [25, 0], shape [25, 100], Float): 3 of 2500 elements
//   // differ; max abs diff 0.5 at [26, 3] (expected 1.25, got 1.75); ...
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

namespace c10dtest {

// How closeness is decided (both: |actual - expected| <= atol + rtol * |expected|, equal values
// always close, NaN close to NaN only with equal_nan).
enum class CloseRule {
  // torch.testing.assert_close: per-dtype default tolerances (exact for integers and bool),
  // computed in float for float32 and narrower and in double otherwise.
  kAssertClose,
  // torch.allclose / torch.isclose: default rtol 1e-5 and atol 1e-8 for every dtype, computed as
  // PyTorch computes them: in the tensors' dtype (bfloat16 and half rounded after each
  // operation), integers and bool in float32; a difference that is not finite is never close.
  kTorchAllclose,
};

struct CompareOptions {
  // Both unset: the rule's defaults for the dtype (default_tolerances). Setting one requires
  // setting the other, as in assert_close.
  std::optional<double> rtol;
  std::optional<double> atol;
  bool equal_nan = false;
  // A dtype difference fails the comparison (else both are compared as double).
  bool check_dtype = true;
  CloseRule rule = CloseRule::kAssertClose;
};

// torch.allclose(expected, actual, rtol, atol, equal_nan)'s verdict, element for element: for
// porting Python tests that use it (PyTorch's own _verify_msd and _compare_tensor do).
CompareOptions torch_allclose(double rtol = 1e-5, double atol = 1e-8, bool equal_nan = false);

// Where `actual` sits, for messages: the state-dict key, the rank that holds it, and the global
// offsets of its first element (so indices are reported in global coordinates).
struct CompareContext {
  std::string key;
  int rank = -1;
  std::vector<std::int64_t> offsets;
};

// assert_close's default (rtol, atol) for a dtype: (0, 0) for integers and bool. With
// kTorchAllclose: (1e-5, 1e-8) for every dtype.
std::pair<double, double> default_tolerances(at::ScalarType dtype,
                                             CloseRule rule = CloseRule::kAssertClose);

// Passes when `actual` has `expected`'s shape (and dtype, if checked) and every element satisfies
// |actual - expected| <= atol + rtol * |expected| (NaNs equal only with equal_nan; infinities
// equal when identical). Devices may differ (both are compared on CPU).
::testing::AssertionResult compare_tensors(const at::Tensor& expected, const at::Tensor& actual,
                                           const CompareOptions& options = {},
                                           const CompareContext& context = {});

}  // namespace c10dtest
