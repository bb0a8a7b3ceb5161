// Private: the pieces of DTensors and ShardedTensors as bytes per group rank, and the assembly
// of a full tensor from them, so that many tensors can share one collective.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "c10dtest/dtensor.hpp"
#include "c10dtest/sharded_tensor.hpp"

namespace c10dtest::detail {

// The group the pieces travel over (a DTensor's mesh group, a ShardedTensor's group).
ProcessGroupPtr group_of(const DTensor& t);
ProcessGroupPtr group_of(const ShardedTensor& t);

// How many bytes group rank `r` contributes.
std::int64_t piece_bytes(const DTensor& t, int r);
std::int64_t piece_bytes(const ShardedTensor& t, int r);

// This rank's contribution, as bytes.
at::Tensor my_piece(const DTensor& t);
at::Tensor my_piece(const ShardedTensor& t);

// The full tensor from every group rank's contribution (by group rank).
at::Tensor assemble(const DTensor& t, const std::vector<at::Tensor>& pieces);
at::Tensor assemble(const ShardedTensor& t, const std::vector<at::Tensor>& pieces);

}  // namespace c10dtest::detail
