// DTensor: a tensor laid out over a DeviceMesh by one placement per mesh dimension.
//
//   auto mesh = c10dtest::DeviceMesh::create({world_size()});
//   auto d = c10dtest::distribute_tensor(full, mesh, {c10dtest::Shard{0}});  // every rank has full
//   d.local();          // this rank's rows (torch.chunk semantics: uneven, maybe empty)
//   d.full_tensor();    // collective over the mesh: the whole tensor again, exactly
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "c10dtest/device_mesh.hpp"
#include "c10dtest/placement.hpp"

namespace c10dtest {

class DTensor {
 public:
  // Wraps this rank's `local` piece. Checks the placements against the mesh and global shape
  // and the local tensor's shape against what this rank should hold; ShardingError names the
  // mismatch (ConfigError when there is no mesh).
  DTensor(at::Tensor local, std::shared_ptr<const DeviceMesh> mesh,
          std::vector<Placement> placements, std::vector<std::int64_t> global_shape);

  const at::Tensor& local() const { return local_; }
  const std::shared_ptr<const DeviceMesh>& mesh() const { return mesh_; }
  const std::vector<Placement>& placements() const { return placements_; }
  const std::vector<std::int64_t>& global_shape() const { return global_shape_; }
  // Contiguous strides of the global shape.
  std::vector<std::int64_t> global_stride() const;
  at::ScalarType dtype() const { return local_.scalar_type(); }

  // Shape and global offset of the piece that `world_rank` holds (any rank of the mesh).
  std::vector<std::int64_t> local_shape_of(int world_rank) const;
  std::vector<std::int64_t> global_offset_of(int world_rank) const;

  // The whole tensor on every rank of the mesh (collective over the mesh, one allgather).
  // Partial placements are reduced by their op (in mesh-dim order); exact for every dtype
  // otherwise. On the local tensor's device. ShardingError on a rank outside the mesh.
  at::Tensor full_tensor() const;
  // The same tensor with every Partial placement made Replicate: each member reduces its piece
  // along the Partial mesh dims (collective over those dims' groups, one allgather each), as
  // PyTorch's redistribute(Partial -> Replicate) does. Shard and Replicate dims are left alone;
  // a rank outside the mesh gets the DTensor back with the new placements (no communication).
  DTensor reduce_partials() const;
  // The same data with every placement Replicate (collective).
  DTensor redistribute_to_replicate() const;

  // "DTensor(shape=[7, 5], dtype=Float, placements=[Shard(0)], mesh=DeviceMesh([4], ...))".
  std::string describe() const;

 private:
  at::Tensor local_;
  std::shared_ptr<const DeviceMesh> mesh_;
  std::vector<Placement> placements_;
  std::vector<std::int64_t> global_shape_;
};

// Lays `full` out over `mesh`. With `source_rank` unset every rank of the mesh must pass the same
// full tensor; with a source rank only that rank's `full` is read (others may pass an undefined
// tensor) and it is broadcast over the mesh first. Partial(sum): the mesh coordinate 0 holds the
// value, the others zeros; product: the others ones; avg, max and min: every coordinate holds the
// value. Ranks outside the mesh get an empty local tensor of `full`'s dtype and device (as
// PyTorch), or an undefined one with a source rank (they never see the source's tensor). Local pieces stay on
// `full`'s device; with a source rank they land on the mesh's device (DeviceMesh::device(), as
// PyTorch puts them on the mesh's device type), wherever the source's tensor was.
DTensor distribute_tensor(const at::Tensor& full, std::shared_ptr<const DeviceMesh> mesh,
                          std::vector<Placement> placements,
                          std::optional<int> source_rank = std::nullopt);

namespace detail {
// Shape and offset of the piece at mesh coordinate `coord`, for tests and ShardedTensor.
void local_extent(const std::vector<std::int64_t>& global_shape,
                  const std::vector<Placement>& placements, const DeviceMesh& mesh,
                  const std::vector<std::int64_t>& coord, std::vector<std::int64_t>* shape,
                  std::vector<std::int64_t>* offset);
// The piece at `coord` of a value whose Partial dims must reduce to `piece` (this rank's slice
// of the full value): in place, the neutral value (0 for sum, 1 for product) where the first
// sum or product dim with a non-zero coordinate says so; as distribute_tensor makes them.
void partial_piece(at::Tensor& piece, const std::vector<Placement>& placements,
                   const std::vector<std::int64_t>& coord);
}  // namespace detail

}  // namespace c10dtest
