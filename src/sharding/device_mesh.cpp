#include "c10dtest/device_mesh.hpp"

#include <algorithm>
#include <set>
#include <sstream>

#include "c10dtest/error.hpp"
#include "common/text.hpp"

namespace c10dtest {

std::shared_ptr<const DeviceMesh> DeviceMesh::create(std::vector<std::int64_t> shape) {
  return create(current_context(), std::move(shape));
}

std::shared_ptr<const DeviceMesh> DeviceMesh::create(std::vector<std::int64_t> shape,
                                                     std::vector<int> ranks) {
  return create(current_context(), std::move(shape), std::move(ranks));
}

std::shared_ptr<const DeviceMesh> DeviceMesh::create(ContextPtr context,
                                                     std::vector<std::int64_t> shape) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  std::vector<int> ranks;
  for (std::int64_t r = 0; r < std::max<std::int64_t>(n, 0); ++r) ranks.push_back(static_cast<int>(r));
  return create(std::move(context), std::move(shape), std::move(ranks));
}

std::shared_ptr<const DeviceMesh> DeviceMesh::create(ContextPtr context,
                                                     std::vector<std::int64_t> shape,
                                                     std::vector<int> ranks) {
  if (!context) throw ConfigError("DeviceMesh: no context");
  Context& world = *context;
  std::int64_t n = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 1) {
      throw ConfigError("DeviceMesh: dimension " + std::to_string(i) + " has size " +
                        std::to_string(shape[i]) + "; every size must be at least 1");
    }
    n *= shape[i];
  }
  if (shape.empty()) throw ConfigError("DeviceMesh: the shape is empty");
  if (n != static_cast<std::int64_t>(ranks.size())) {
    throw ConfigError("DeviceMesh: shape " + detail::shape_text(shape) + " holds " + std::to_string(n) +
                      " ranks but " + std::to_string(ranks.size()) + " were given");
  }
  if (n > world.world_size()) {
    throw ConfigError("DeviceMesh: shape " + detail::shape_text(shape) + " needs " + std::to_string(n) +
                      " ranks, the world has " + std::to_string(world.world_size()));
  }
  std::set<int> seen;
  for (int r : ranks) {
    if (r < 0 || r >= world.world_size() || !seen.insert(r).second) {
      throw ConfigError("DeviceMesh: rank " + std::to_string(r) +
                        " is outside the world or appears twice");
    }
  }

  std::shared_ptr<DeviceMesh> mesh(new DeviceMesh());
  mesh->shape_ = std::move(shape);
  mesh->ranks_ = std::move(ranks);
  mesh->my_rank_ = world.rank();
  mesh->context_ = context;
  mesh->all_group_ = world.new_group(mesh->ranks_);
  // For each mesh dim: partition the mesh into lines along that dim.
  for (int d = 0; d < mesh->ndim(); ++d) {
    std::vector<std::vector<int>> lines;
    std::vector<std::vector<std::int64_t>> keys;
    for (int r : mesh->ranks_) {
      auto coord = mesh->coordinate_of(r);
      coord[static_cast<std::size_t>(d)] = 0;
      const auto it = std::find(keys.begin(), keys.end(), coord);
      if (it == keys.end()) {
        keys.push_back(coord);
        lines.push_back({r});
      } else {
        lines[static_cast<std::size_t>(it - keys.begin())].push_back(r);
      }
    }
    mesh->dim_groups_.push_back(world.new_subgroups(lines));
  }
  return mesh;
}

std::int64_t DeviceMesh::size(int dim) const {
  if (dim < 0 || dim >= ndim()) {
    throw ConfigError("DeviceMesh: dimension " + std::to_string(dim) + " is outside a " +
                      std::to_string(ndim()) + "-D mesh");
  }
  return shape_[static_cast<std::size_t>(dim)];
}

bool DeviceMesh::contains(int world_rank) const {
  return std::find(ranks_.begin(), ranks_.end(), world_rank) != ranks_.end();
}

std::vector<std::int64_t> DeviceMesh::coordinate_of(int world_rank) const {
  const auto it = std::find(ranks_.begin(), ranks_.end(), world_rank);
  if (it == ranks_.end()) {
    throw ConfigError("rank " + std::to_string(world_rank) + " is not in " + describe());
  }
  std::int64_t index = it - ranks_.begin();
  std::vector<std::int64_t> coord(shape_.size());
  for (int d = ndim() - 1; d >= 0; --d) {
    coord[static_cast<std::size_t>(d)] = index % shape_[static_cast<std::size_t>(d)];
    index /= shape_[static_cast<std::size_t>(d)];
  }
  return coord;
}

int DeviceMesh::rank_at(const std::vector<std::int64_t>& coordinate) const {
  if (coordinate.size() != shape_.size()) {
    throw ConfigError("coordinate of " + std::to_string(coordinate.size()) + " values for " +
                      describe());
  }
  std::int64_t index = 0;
  for (std::size_t d = 0; d < shape_.size(); ++d) {
    if (coordinate[d] < 0 || coordinate[d] >= shape_[d]) {
      throw ConfigError("coordinate " + std::to_string(coordinate[d]) + " of dimension " +
                        std::to_string(d) + " is outside " + describe());
    }
    index = index * shape_[d] + coordinate[d];
  }
  return ranks_[static_cast<std::size_t>(index)];
}

std::optional<std::vector<std::int64_t>> DeviceMesh::my_coordinate() const {
  if (!contains(my_rank_)) return std::nullopt;
  return coordinate_of(my_rank_);
}

ProcessGroupPtr DeviceMesh::group(int dim) const {
  size(dim);  // validates
  return dim_groups_[static_cast<std::size_t>(dim)];
}

std::shared_ptr<const DeviceMesh> DeviceMesh::sub_mesh(int dim) const {
  size(dim);  // validates
  const auto mine = my_coordinate();
  if (!mine) {
    throw ConfigError("sub_mesh: rank " + std::to_string(my_rank_) + " is not in " + describe());
  }
  std::shared_ptr<DeviceMesh> sub(new DeviceMesh());
  sub->shape_ = {shape_[static_cast<std::size_t>(dim)]};
  auto coord = *mine;
  for (std::int64_t i = 0; i < shape_[static_cast<std::size_t>(dim)]; ++i) {
    coord[static_cast<std::size_t>(dim)] = i;
    sub->ranks_.push_back(rank_at(coord));
  }
  sub->dim_groups_ = {dim_groups_[static_cast<std::size_t>(dim)]};
  sub->all_group_ = dim_groups_[static_cast<std::size_t>(dim)];
  sub->my_rank_ = my_rank_;
  sub->context_ = context_;
  return sub;
}

std::string DeviceMesh::describe() const {
  std::ostringstream os;
  os << "DeviceMesh(" << detail::shape_text(shape_) << ", ranks=[";
  for (std::size_t i = 0; i < ranks_.size(); ++i) os << (i ? ", " : "") << ranks_[i];
  os << "])";
  return os.str();
}

}  // namespace c10dtest
