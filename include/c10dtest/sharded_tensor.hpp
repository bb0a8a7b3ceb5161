// ShardedTensor: local shards with explicit metadata (offsets, sizes, owning rank), any number per
// rank (none included), any sharding dims, uneven sizes; global metadata lists every shard.
//
//   std::vector<c10dtest::LocalShard> mine{{tensor, {{row0, 0}, {rows, cols}, rank()}}};
//   auto st = c10dtest::ShardedTensor::from_local_shards(mine, {7, 5}, process_group());
//   st.validate();          // throws ShardingError naming a gap, an overlap, a bad shard
//   at::Tensor full = st.full_tensor();
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "c10dtest/comm.hpp"
#include "c10dtest/error.hpp"

namespace c10dtest {

// ShardingError (error.hpp): shards do not tile the global tensor, or disagree with their
// metadata.
struct ShardMetadata {
  std::vector<std::int64_t> offsets;
  std::vector<std::int64_t> sizes;
  int rank = 0;  // group rank of the owner
};

struct LocalShard {
  at::Tensor tensor;
  ShardMetadata metadata;
};

struct ShardedTensorMetadata {
  std::vector<std::int64_t> global_shape;
  at::ScalarType dtype = at::kFloat;
  std::vector<ShardMetadata> shards;  // grouped by owner rank, ascending, local order kept
};

// Checks that `meta`'s shards tile its global shape exactly: every shard in bounds with the right
// rank count, no two overlapping, no element uncovered. ShardingError names the shard(s) (index,
// owner, offsets, sizes) or the first uncovered index.
void validate_tiling(const ShardedTensorMetadata& meta, int group_size);

class ShardedTensor {
 public:
  // Collective over `pg`: exchanges every rank's shard metadata (and dtype) to build the global
  // metadata. Checks the local shards against their own metadata first.
  static ShardedTensor from_local_shards(std::vector<LocalShard> local_shards,
                                         std::vector<std::int64_t> global_shape,
                                         ProcessGroupPtr pg);

  // Without communication: `metadata` must already list every rank's shards (as another
  // ShardedTensor's does); checked against the local shards, not across ranks.
  static ShardedTensor from_metadata(std::vector<LocalShard> local_shards,
                                     ShardedTensorMetadata metadata, ProcessGroupPtr pg);

  const std::vector<LocalShard>& local_shards() const { return local_; }
  const ShardedTensorMetadata& metadata() const { return meta_; }
  const ProcessGroupPtr& process_group() const { return pg_; }

  // validate_tiling plus this rank's tensors against their metadata and the common dtype.
  void validate() const;
  // The whole tensor on every rank (one allgather), on the device of this rank's shards (the
  // current context's device on a rank without any, see context.hpp). Pieces travel through CPU memory on Gloo and through
  // the GPU on NCCL. Throws ShardingError if validate() would.
  at::Tensor full_tensor() const;

  std::string describe() const;

 private:
  std::vector<LocalShard> local_;
  ShardedTensorMetadata meta_;
  ProcessGroupPtr pg_;
};

}  // namespace c10dtest
