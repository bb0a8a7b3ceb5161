// Private: the element-wise comparison behind compare_tensors and the state-dict verifier. One
// pass over both tensors in blocks (bounded extra memory), a second pass only over blocks that
// hold mismatches; results from several pieces of one tensor merge into what one comparison of
// the whole tensor would have found.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace c10dtest::detail {

struct ScanTolerance {
  double rtol = 0;
  double atol = 0;
  bool equal_nan = false;
  bool torch_allclose = false;  // CloseRule::kTorchAllclose
};

// "allowed: atol 1e-05 + rtol 1.3e-06 * |expected|" (", as torch.allclose computes it").
std::string tolerance_text(const ScanTolerance& t);

// One mismatching element: its global index and both values as text.
struct ElementAt {
  std::vector<std::int64_t> index;
  std::string expected;
  std::string actual;
};

struct MismatchStats {
  std::int64_t checked = 0;  // elements compared
  std::int64_t bad = 0;      // elements outside the tolerance
  // Set when bad > 0. `first`: the smallest global index (row-major order). `worst`: the largest
  // absolute difference (NaN above infinity above finite; ties go to the smaller index).
  ElementAt first;
  ElementAt worst;
  double worst_abs = 0;
  int worst_class = 0;  // 0 finite, 1 infinite, 2 NaN
  double max_rel = 0;   // over mismatches; NaN differences left out, x vs 0 is infinite
  std::int64_t nan_bad = 0;  // mismatches where either value is NaN
  std::int64_t inf_bad = 0;  // mismatches where either value is infinite (and neither is NaN)

  // Folds `other` (another piece of the same tensor) in: counts add, first/worst are chosen as
  // over the union, so the order of merging does not matter. True when `other`'s first
  // mismatch became the first (callers keep where it came from).
  bool merge(const MismatchStats& other);
};

// Compares `actual` with `expected` (same shape; dtypes may differ: then both are compared as
// double, or as complex double). `offsets` place `actual` in the global tensor for the indices
// reported. Tensors on other devices are copied to CPU a block at a time.
MismatchStats scan(const at::Tensor& expected, const at::Tensor& actual, const ScanTolerance& tol,
                   const std::vector<std::int64_t>& offsets);

// Compares `actual` with the piece of `whole` at `offsets` (of actual's sizes, inside `whole`),
// as scan(whole's slice, actual, tol, offsets) does, without making a view when that piece is
// one run of whole's memory.
MismatchStats scan_piece(const at::Tensor& whole, const at::Tensor& actual,
                         const ScanTolerance& tol, const std::vector<std::int64_t>& offsets);

// "3 of 2500 elements differ (0.12%); first at [26, 3] (expected 1.25, got 1.75); max abs diff
// 0.5 at [26, 3] (expected 1.25, got 1.75); max rel diff 0.4". Mismatches involving NaN or an
// infinity are counted as such ("(0.12%: 2 with NaN)"); the relative difference is left out
// when every mismatch involves a NaN.
//
// `copies`: when the value has copies on several ranks, the mismatches of each copy that has
// any (`s` holds them all): counts are then given per copy ("3 of 60 elements differ (5%) in
// each of 4 copies"), never multiplied by the number of copies.
std::string describe(const MismatchStats& s, const std::vector<MismatchStats>& copies = {});

}  // namespace c10dtest::detail
