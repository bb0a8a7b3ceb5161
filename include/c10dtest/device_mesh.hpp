// DeviceMesh: an N-D arrangement of world ranks with one process group per mesh dimension.
//
//   auto mesh = c10dtest::DeviceMesh::create({2, world_size() / 2});   // HSDP-style (2, W/2)
//   auto coord = mesh->coordinate_of(rank());                         // {row, column}
//   mesh->group(1)->allreduce(t)->wait();                             // along a row
//
// Construction is collective over the context's world (every rank, same order), like new_group.
// The mesh's groups come from its Context: the one passed, else current_context() (the runner's
// world inside a c10dtest test binary). Everything built on the mesh (DTensors, their state
// dicts, gathers) takes this rank and its device from the mesh. Inside a test, create meshes in
// the test: their groups are not rebuilt after a failed test.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "c10dtest/comm.hpp"
#include "c10dtest/context.hpp"

namespace c10dtest {

class DeviceMesh {
 public:
  // A mesh of `shape` over world ranks 0 .. prod(shape)-1 in row-major order, or over `ranks`
  // (row-major, each once). Throws ConfigError when the sizes do not match or a rank is invalid.
  static std::shared_ptr<const DeviceMesh> create(std::vector<std::int64_t> shape);
  static std::shared_ptr<const DeviceMesh> create(std::vector<std::int64_t> shape,
                                                  std::vector<int> ranks);
  // The same over `context`'s ranks and groups.
  static std::shared_ptr<const DeviceMesh> create(ContextPtr context,
                                                  std::vector<std::int64_t> shape);
  static std::shared_ptr<const DeviceMesh> create(ContextPtr context,
                                                  std::vector<std::int64_t> shape,
                                                  std::vector<int> ranks);

  int ndim() const { return static_cast<int>(shape_.size()); }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::int64_t size(int dim) const;
  std::int64_t numel() const { return static_cast<std::int64_t>(ranks_.size()); }
  // World ranks in row-major order.
  const std::vector<int>& ranks() const { return ranks_; }
  bool contains(int world_rank) const;

  // Mesh coordinate of a world rank; ConfigError if it is not in the mesh.
  std::vector<std::int64_t> coordinate_of(int world_rank) const;
  int rank_at(const std::vector<std::int64_t>& coordinate) const;
  // This process's world rank (in the mesh or not), its device and the mesh's context.
  int my_rank() const { return my_rank_; }
  c10::Device device() const { return context_->device(); }
  const ContextPtr& context() const { return context_; }

  // This rank's coordinate, or nullopt when this rank is not in the mesh.
  std::optional<std::vector<std::int64_t>> my_coordinate() const;

  // This rank's group along mesh dimension `dim` (the ranks sharing every other coordinate);
  // nullptr when this rank is not in the mesh.
  ProcessGroupPtr group(int dim) const;
  // A group over every rank of the mesh (group rank = position in ranks()).
  ProcessGroupPtr all_group() const { return all_group_; }

  // The 1-D mesh along `dim` that holds this rank (PyTorch's mesh["dp"]): its ranks are those
  // sharing this rank's other coordinates, and it reuses this mesh's group for `dim` (no
  // communication). ConfigError when this rank is not in the mesh.
  std::shared_ptr<const DeviceMesh> sub_mesh(int dim) const;

  // "DeviceMesh([2, 2], ranks=[0, 1, 2, 3])".
  std::string describe() const;

 private:
  DeviceMesh() = default;
  ContextPtr context_;
  std::vector<std::int64_t> shape_;
  std::vector<int> ranks_;
  std::vector<ProcessGroupPtr> dim_groups_;
  ProcessGroupPtr all_group_;
  int my_rank_ = -1;
};

}  // namespace c10dtest
