// Private helpers: move tensors of any dtype through a process group as bytes.
//
// Every collective here stages its buffers on exchange_device(pg): CPU for Gloo (also when the
// tensors live on a GPU: the bytes cross through host memory), the group's GPU for NCCL (which
// only takes CUDA tensors). Inputs may live anywhere; results are on the exchange device, and
// callers move them to where the result belongs (a shard's device, or CPU for cpu_offload).
#pragma once

#include <ATen/ATen.h>

#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "c10dtest/comm.hpp"

namespace c10dtest::detail {

// A flat uint8 view (or copy, when not contiguous) of `t`'s elements.
at::Tensor as_bytes(const at::Tensor& t);
// The inverse: `bytes` (exactly numel * element size of them) as a tensor of `dtype`, `shape`;
// a view of them when their offset allows, else a copy.
at::Tensor from_bytes(const at::Tensor& bytes, at::ScalarType dtype, at::IntArrayRef shape);

// CUDA (the group's bound device, else the current one) for an NCCL group, CPU otherwise.
c10::Device exchange_device(const ProcessGroupPtr& pg);

// Broadcasts `bytes` (1-D, any dtype, the same length everywhere) from group rank `root` in place,
// through exchange_device(pg). `bytes` may live on any device.
void broadcast_bytes(const ProcessGroupPtr& pg, at::Tensor& bytes, int root);

// Allgathers each member's 1-D uint8 tensor over `pg` in one collective (padding to the longest;
// a tensor that already has the padded length is sent as is);
// returns them by group rank, each of its true length. `sizes` (by group rank) skips the size
// exchange when every member already knows them.
std::vector<at::Tensor> all_gather_bytes(const ProcessGroupPtr& pg, const at::Tensor& bytes,
                                         std::optional<std::vector<std::int64_t>> sizes = {});

// Every member's `value` (a small trivially copyable struct), by group rank, in one allgather:
// what members state before a bulk transfer, so that a mismatch is found before it, on all.
template <typename T>
std::vector<T> all_gather_value(const ProcessGroupPtr& pg, const T& value) {
  static_assert(std::is_trivially_copyable_v<T>, "all_gather_value sends raw bytes");
  at::Tensor bytes = at::empty({static_cast<std::int64_t>(sizeof(T))}, at::kByte);
  std::memcpy(bytes.data_ptr(), &value, sizeof(T));
  const auto all = all_gather_bytes(
      pg, bytes,
      std::vector<std::int64_t>(static_cast<std::size_t>(pg->getSize()), sizeof(T)));
  std::vector<T> out(all.size());
  for (std::size_t r = 0; r < all.size(); ++r) {
    // Read on the host (an NCCL group gathers on the GPU).
    std::memcpy(&out[r], all[r].cpu().contiguous().data_ptr(), sizeof(T));
  }
  return out;
}

// Allgathers equal-length 1-D uint8 tensors into one buffer: member r's bytes at r * length.
at::Tensor all_gather_padded(const ProcessGroupPtr& pg, const at::Tensor& bytes);

// Gathers each member's 1-D uint8 tensor to group rank `root` in one collective (padded to the
// longest of `sizes`); returns them by group rank on the root, nothing elsewhere.
std::vector<at::Tensor> gather_bytes(const ProcessGroupPtr& pg, const at::Tensor& bytes,
                                     const std::vector<std::int64_t>& sizes, int root);

}  // namespace c10dtest::detail
