// Moving whole state dicts between ranks: gather sharded values into full tensors, broadcast a
// full dict from rank 0, and slice a full dict into the layout of a sharded one. Every call is
// collective over the groups the values live on, and moves all tensors of a group in one
// collective (not one per tensor).
#pragma once

#include <optional>
#include <vector>

#include "c10dtest/comm.hpp"
#include "c10dtest/context.hpp"
#include "c10dtest/state_dict.hpp"

namespace c10dtest {

struct GatherOptions {
  // Full tensors (and the dict's plain tensors) are moved to CPU. Without it a full tensor lives
  // where its shards did (a DTensor's local device, a ShardedTensor's shards' device).
  bool cpu_offload = false;
  // Only these world ranks receive full tensors (a gather to each, not an allgather); the others
  // send their pieces and get an empty dict.
  std::optional<std::vector<int>> ranks_only;
  // Whose world ranks ranks_only and the error messages name: by default the mesh of the dict's
  // first DTensor, else current_context() (the runner's world in a test binary).
  ContextPtr context;
};

// The same tree with every DTensor and ShardedTensor replaced by its full tensor. Every rank of
// a value's group must pass a dict of the same layout (checked: StateDictError names a rank that
// differs). Nested dicts and lists are walked.
StateDict gather_state_dict(const StateDict& state_dict, const GatherOptions& options = {});

// Rank 0 of `group` (by default current_context()'s world group) passes a dict of full tensors and plain values;
// every rank gets a copy (other ranks' argument is ignored). Three broadcasts in all, staged on
// the group's device (CPU for Gloo, the GPU for NCCL). Rank 0 gets its own dict back; the other
// ranks' tensors are on CPU.
StateDict broadcast_state_dict(const StateDict& state_dict, ProcessGroupPtr group = {});

// Slices `full` (full tensors, on every rank) into the layout of `like`: DTensor and
// ShardedTensor entries of `like` get this rank's pieces of the matching full tensors; other
// entries take the value from `full`. StateDictError names a missing key or a shape mismatch.
// Needs no communication.
StateDict distribute_state_dict(const StateDict& full, const StateDict& like);

}  // namespace c10dtest
