// Private helpers: move tensors of any dtype through Gloo as bytes.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "c10dtest/comm.hpp"

namespace c10dtest::detail {

// A flat uint8 view (or copy, when not contiguous) of `t`'s elements.
at::Tensor as_bytes(const at::Tensor& t);
// The inverse: `bytes` (exactly numel * element size of them) as a tensor of `dtype`, `shape`;
// a view of them when their offset allows, else a copy.
at::Tensor from_bytes(const at::Tensor& bytes, at::ScalarType dtype, at::IntArrayRef shape);

// Allgathers each member's 1-D uint8 tensor over `pg` in one collective (padding to the longest;
// a tensor that already has the padded length is sent as is);
// returns them by group rank, each of its true length. `sizes` (by group rank) skips the size
// exchange when every member already knows them.
std::vector<at::Tensor> all_gather_bytes(const ProcessGroupPtr& pg, const at::Tensor& bytes,
                                         std::optional<std::vector<std::int64_t>> sizes = {});

// Allgathers equal-length 1-D uint8 tensors into one buffer: member r's bytes at r * length.
at::Tensor all_gather_padded(const ProcessGroupPtr& pg, const at::Tensor& bytes);

// Gathers each member's 1-D uint8 tensor to group rank `root` in one collective (padded to the
// longest of `sizes`); returns them by group rank on the root, nothing elsewhere.
std::vector<at::Tensor> gather_bytes(const ProcessGroupPtr& pg, const at::Tensor& bytes,
                                     const std::vector<std::int64_t>& sizes, int root);

}  // namespace c10dtest::detail
