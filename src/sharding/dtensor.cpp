#include "c10dtest/dtensor.hpp"

#include <sstream>

#include "assemble.hpp"
#include "comm/bytes.hpp"
#include "common/tensor.hpp"
#include "common/text.hpp"
#include "c10dtest/error.hpp"

namespace c10dtest {

namespace {

void check_placements(const std::vector<Placement>& placements, const DeviceMesh& mesh,
                      const std::vector<std::int64_t>& global_shape) {
  if (static_cast<int>(placements.size()) != mesh.ndim()) {
    throw ShardingError("DTensor: " + std::to_string(placements.size()) + " placements " +
                      to_string(placements) + " for a " + std::to_string(mesh.ndim()) +
                      "-D " + mesh.describe());
  }
  for (const auto& p : placements) {
    if (const auto* s = std::get_if<Shard>(&p)) {
      if (s->dim < 0 || s->dim >= static_cast<std::int64_t>(global_shape.size())) {
        throw ShardingError("DTensor: " + to_string(p) + " is outside a tensor of shape " +
                          detail::shape_text(global_shape));
      }
    }
  }
}

bool has_partial(const std::vector<Placement>& placements) {
  for (const auto& p : placements) {
    if (std::holds_alternative<Partial>(p)) return true;
  }
  return false;
}

}  // namespace

namespace detail {

void local_extent(const std::vector<std::int64_t>& global_shape,
                  const std::vector<Placement>& placements, const DeviceMesh& mesh,
                  const std::vector<std::int64_t>& coord, std::vector<std::int64_t>* shape,
                  std::vector<std::int64_t>* offset) {
  *shape = global_shape;
  offset->assign(global_shape.size(), 0);
  // Mesh dims left to right; a tensor dim sharded on several mesh dims is chunked again.
  for (int m = 0; m < mesh.ndim(); ++m) {
    const auto* s = std::get_if<Shard>(&placements[static_cast<std::size_t>(m)]);
    if (s == nullptr) continue;
    const auto d = static_cast<std::size_t>(s->dim);
    const ChunkExtent e = chunk_extent((*shape)[d], mesh.size(m), coord[static_cast<std::size_t>(m)]);
    (*offset)[d] += e.offset;
    (*shape)[d] = e.length;
  }
}

}  // namespace detail

DTensor::DTensor(at::Tensor local, std::shared_ptr<const DeviceMesh> mesh,
                 std::vector<Placement> placements, std::vector<std::int64_t> global_shape)
    : local_(std::move(local)),
      mesh_(std::move(mesh)),
      placements_(std::move(placements)),
      global_shape_(std::move(global_shape)) {
  if (!mesh_) throw ConfigError("DTensor: no mesh");
  const int me = mesh_->my_rank();
  // A rank outside the mesh holds nothing (and may not know the global shape).
  if (!mesh_->contains(me)) return;
  check_placements(placements_, *mesh_, global_shape_);
  const auto expected = local_shape_of(me);
  if (!local_.defined() || local_.sizes().vec() != expected) {
    throw ShardingError("DTensor: rank " + std::to_string(me) + " holds a local tensor of shape " +
                      (local_.defined() ? detail::shape_text(local_.sizes().vec()) : "<undefined>") +
                      " but " + to_string(placements_) + " of global shape " +
                      detail::shape_text(global_shape_) + " gives it " + detail::shape_text(expected));
  }
}

std::vector<std::int64_t> DTensor::global_stride() const {
  std::vector<std::int64_t> stride(global_shape_.size(), 1);
  for (int d = static_cast<int>(global_shape_.size()) - 2; d >= 0; --d) {
    stride[static_cast<std::size_t>(d)] =
        stride[static_cast<std::size_t>(d) + 1] * global_shape_[static_cast<std::size_t>(d) + 1];
  }
  return stride;
}

std::vector<std::int64_t> DTensor::local_shape_of(int world_rank) const {
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> offset;
  detail::local_extent(global_shape_, placements_, *mesh_, mesh_->coordinate_of(world_rank),
                       &shape, &offset);
  return shape;
}

std::vector<std::int64_t> DTensor::global_offset_of(int world_rank) const {
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> offset;
  detail::local_extent(global_shape_, placements_, *mesh_, mesh_->coordinate_of(world_rank),
                       &shape, &offset);
  return offset;
}

namespace detail {

ProcessGroupPtr group_of(const DTensor& t) { return t.mesh()->all_group(); }

std::int64_t piece_bytes(const DTensor& t, int r) {
  std::int64_t n = static_cast<std::int64_t>(c10::elementSize(t.dtype()));
  for (auto s : t.local_shape_of(t.mesh()->ranks()[static_cast<std::size_t>(r)])) n *= s;
  return n;
}

at::Tensor my_piece(const DTensor& t) { return as_bytes(t.local()); }

at::Tensor assemble(const DTensor& t, const std::vector<at::Tensor>& pieces) {
  const auto& mesh = *t.mesh();
  const auto& placements = t.placements();
  const bool partial = has_partial(placements);
  // Shard and Replicate pieces cover every element once; only sums need a zeroed start.
  at::Tensor full = partial ? at::zeros(t.global_shape(), t.local().options())
                            : at::empty(t.global_shape(), t.local().options());
  for (std::size_t i = 0; i < mesh.ranks().size(); ++i) {
    const auto coord = mesh.coordinate_of(mesh.ranks()[i]);
    // A replica is counted once: only coordinate 0 along Replicate dims contributes.
    bool contributes = true;
    for (int m = 0; m < mesh.ndim(); ++m) {
      if (std::holds_alternative<Replicate>(placements[static_cast<std::size_t>(m)]) &&
          coord[static_cast<std::size_t>(m)] != 0) {
        contributes = false;
      }
    }
    if (!contributes) continue;
    std::vector<std::int64_t> shape;
    std::vector<std::int64_t> offset;
    local_extent(t.global_shape(), placements, mesh, coord, &shape, &offset);
    // Pieces arrive on the group's exchange device; sums need them on the result's.
    at::Tensor piece = from_bytes(pieces[i], t.dtype(), shape).to(full.device());
    at::Tensor target = slice_block(full, shape, offset);
    if (!partial) {
      target.copy_(piece);
    } else if (t.dtype() == at::kBool) {
      target.bitwise_or_(piece);
    } else {
      target.add_(piece);
    }
  }
  return full;
}

}  // namespace detail

at::Tensor DTensor::full_tensor() const {
  if (!mesh_->contains(mesh_->my_rank())) {
    throw ShardingError("DTensor::full_tensor: rank " + std::to_string(mesh_->my_rank()) +
                      " is not in " + mesh_->describe());
  }
  std::vector<std::int64_t> sizes;
  for (int r = 0; r < static_cast<int>(mesh_->ranks().size()); ++r) {
    sizes.push_back(detail::piece_bytes(*this, r));
  }
  return detail::assemble(*this, detail::all_gather_bytes(mesh_->all_group(),
                                                          detail::my_piece(*this), sizes));
}

DTensor DTensor::redistribute_to_replicate() const {
  return DTensor(full_tensor(), mesh_, std::vector<Placement>(placements_.size(), Replicate{}),
                 global_shape_);
}

std::string DTensor::describe() const {
  std::ostringstream os;
  os << "DTensor(shape=" << detail::shape_text(global_shape_) << ", dtype=" << c10::toString(dtype())
     << ", placements=" << to_string(placements_) << ", mesh=" << mesh_->describe() << ")";
  return os.str();
}

DTensor distribute_tensor(const at::Tensor& full, std::shared_ptr<const DeviceMesh> mesh,
                          std::vector<Placement> placements, std::optional<int> source_rank) {
  if (!mesh) throw ConfigError("distribute_tensor: no mesh");
  const int me = mesh->my_rank();
  at::Tensor whole = full;
  if (source_rank) {
    if (!mesh->contains(*source_rank)) {
      throw ShardingError("distribute_tensor: source rank " + std::to_string(*source_rank) +
                        " is not in " + mesh->describe());
    }
    if (!mesh->contains(me)) {
      return DTensor(at::Tensor(), mesh, std::move(placements), {});
    }
    // The source tells the others the shape and dtype, then broadcasts the bytes.
    const auto& ranks = mesh->ranks();
    const int root = static_cast<int>(std::find(ranks.begin(), ranks.end(), *source_rank) -
                                      ranks.begin());
    at::Tensor meta = at::zeros({34}, at::kLong);
    if (me == *source_rank) {
      if (!whole.defined() || whole.dim() > 32) {
        throw ConfigError("distribute_tensor: the source rank's tensor is undefined or has more "
                          "than 32 dims");
      }
      meta[0] = static_cast<std::int64_t>(whole.scalar_type());
      meta[1] = whole.dim();
      for (std::int64_t d = 0; d < whole.dim(); ++d) meta[2 + d] = whole.size(d);
    }
    detail::broadcast_bytes(mesh->all_group(), meta, root);  // a kLong tensor, sent as is
    const auto dtype = static_cast<at::ScalarType>(meta[0].item<std::int64_t>());
    std::vector<std::int64_t> shape;
    for (std::int64_t d = 0; d < meta[1].item<std::int64_t>(); ++d) {
      shape.push_back(meta[2 + d].item<std::int64_t>());
    }
    std::int64_t nbytes = static_cast<std::int64_t>(c10::elementSize(dtype));
    for (auto s : shape) nbytes *= s;
    // The bytes cross on the group's exchange device; every rank's piece then lands on the
    // mesh's device (as PyTorch puts it on the mesh's device type): the others cannot know
    // where the source's tensor lives.
    at::Tensor bytes = me == *source_rank ? detail::as_bytes(whole).clone()
                                          : at::empty({nbytes}, at::TensorOptions().dtype(at::kByte));
    detail::broadcast_bytes(mesh->all_group(), bytes, root);
    whole = detail::from_bytes(bytes, dtype, shape).to(mesh->device());
  }
  if (!mesh->contains(me)) {
    return DTensor(at::Tensor(), mesh, std::move(placements), whole.sizes().vec());
  }
  if (!whole.defined()) throw ConfigError("distribute_tensor: rank " + std::to_string(me) +
                                          " passed an undefined tensor and no source rank");
  const std::vector<std::int64_t> global = whole.sizes().vec();
  check_placements(placements, *mesh, global);
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> offset;
  const auto coord = mesh->coordinate_of(me);
  detail::local_extent(global, placements, *mesh, coord, &shape, &offset);
  at::Tensor local = detail::slice_block(whole, shape, offset).clone();
  for (int m = 0; m < mesh->ndim(); ++m) {
    if (std::holds_alternative<Partial>(placements[static_cast<std::size_t>(m)]) &&
        coord[static_cast<std::size_t>(m)] != 0) {
      local.zero_();
    }
  }
  return DTensor(local, std::move(mesh), std::move(placements), global);
}

}  // namespace c10dtest
