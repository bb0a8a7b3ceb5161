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

// A Partial op this dtype cannot be reduced by: named before any collective, on every member.
void check_partial_dtype(const std::vector<Placement>& placements, at::ScalarType dtype) {
  for (const auto& p : placements) {
    const auto* partial = std::get_if<Partial>(&p);
    if (partial == nullptr) continue;
    const bool complex = at::isComplexType(dtype);
    const bool floating = at::isFloatingType(dtype) || complex;
    if (partial->op == PartialOp::kAvg && !floating) {
      throw ShardingError("DTensor: " + to_string(p) + " needs a floating or complex dtype, not " +
                          c10::toString(dtype));
    }
    if ((partial->op == PartialOp::kMax || partial->op == PartialOp::kMin) && complex) {
      throw ShardingError("DTensor: " + to_string(p) + " cannot order a complex dtype (" +
                          c10::toString(dtype) + ")");
    }
  }
}

// acc = acc (op) piece, in place; a bool tensor's sum and max are "or", product and min "and".
// Avg sums here; the caller divides once at the end.
void combine(at::Tensor& acc, const at::Tensor& piece, PartialOp op) {
  const bool boolean = acc.scalar_type() == at::kBool;
  switch (op) {
    case PartialOp::kSum:
    case PartialOp::kAvg:
      if (boolean) acc.logical_or_(piece); else acc.add_(piece);
      break;
    case PartialOp::kProduct:
      if (boolean) acc.logical_and_(piece); else acc.mul_(piece);
      break;
    case PartialOp::kMax:
      if (boolean) acc.logical_or_(piece); else acc.copy_(at::maximum(acc, piece));
      break;
    case PartialOp::kMin:
      if (boolean) acc.logical_and_(piece); else acc.copy_(at::minimum(acc, piece));
      break;
  }
}

// Reduces `pieces` (the values along one Partial mesh dimension, in coordinate order) by `op`.
// full_tensor() and the verifier both reduce through here, so their results agree bit for bit.
// Avg sums in double (complex double) and rounds once; where every piece holds the same value
// the mean is that value, exactly (x + x + x rounds in double; distribute_tensor gives every
// member the value, and the round trip must give it back bit for bit).
at::Tensor reduce_pieces(const std::vector<at::Tensor>& pieces, PartialOp op) {
  if (op != PartialOp::kAvg) {
    at::Tensor acc = pieces.front().clone();
    for (std::size_t i = 1; i < pieces.size(); ++i) combine(acc, pieces[i], op);
    return acc;
  }
  const at::Tensor& first = pieces.front();
  const auto wide = first.is_complex() ? at::kComplexDouble : at::kDouble;
  at::Tensor sum = first.to(wide, /*non_blocking=*/false, /*copy=*/true);
  at::Tensor same = at::ones_like(first, first.options().dtype(at::kBool));
  for (std::size_t i = 1; i < pieces.size(); ++i) {
    sum.add_(pieces[i].to(wide));
    same.logical_and_(pieces[i] == first);
  }
  sum.div_(static_cast<double>(pieces.size()));
  return at::where(same, first, sum.to(first.scalar_type()));
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

void partial_piece(at::Tensor& piece, const std::vector<Placement>& placements,
                   const std::vector<std::int64_t>& coord) {
  // Partial dims are reduced in mesh-dim order, so a member holds the neutral value of the
  // first sum or product dim along which it is not at coordinate 0 (avg, max and min dims hold
  // the value at every coordinate and decide nothing): dims are visited from the last, the
  // first one writing last. Each reduction then gives the value the next one expects.
  for (std::size_t m = std::min(placements.size(), coord.size()); m-- > 0;) {
    const auto* partial = std::get_if<Partial>(&placements[m]);
    if (partial == nullptr || coord[m] == 0) continue;
    if (partial->op == PartialOp::kSum) piece.zero_();
    if (partial->op == PartialOp::kProduct) piece.fill_(1);
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
  if (local_.defined()) check_partial_dtype(placements_, local_.scalar_type());
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
  at::Tensor full = at::empty(t.global_shape(), t.local().options());
  // Every mesh position's piece, by its row-major index; on the result's device.
  std::vector<at::Tensor> piece(mesh.ranks().size());
  std::vector<std::vector<std::int64_t>> offsets(mesh.ranks().size());
  for (std::size_t i = 0; i < mesh.ranks().size(); ++i) {
    std::vector<std::int64_t> shape;
    local_extent(t.global_shape(), placements, mesh, mesh.coordinate_of(mesh.ranks()[i]), &shape,
                 &offsets[i]);
    piece[i] = from_bytes(pieces[i], t.dtype(), shape).to(full.device());
  }
  // Partial dims are reduced one at a time, in mesh-dim order, into coordinate 0 along them:
  // as DTensor::reduce_partials() does, so both give the same bits.
  std::int64_t stride = static_cast<std::int64_t>(mesh.ranks().size());
  std::vector<std::int64_t> strides(static_cast<std::size_t>(mesh.ndim()));
  for (int m = 0; m < mesh.ndim(); ++m) {
    stride /= mesh.size(m);
    strides[static_cast<std::size_t>(m)] = stride;
  }
  auto coordinate = [&](std::size_t i, int m) {
    return (static_cast<std::int64_t>(i) / strides[static_cast<std::size_t>(m)]) % mesh.size(m);
  };
  for (int m = 0; m < mesh.ndim(); ++m) {
    const auto* partial = std::get_if<Partial>(&placements[static_cast<std::size_t>(m)]);
    if (partial == nullptr) continue;
    for (std::size_t i = 0; i < piece.size(); ++i) {
      if (coordinate(i, m) != 0 || !piece[i].defined()) continue;
      std::vector<at::Tensor> along;
      for (std::int64_t k = 0; k < mesh.size(m); ++k) {
        along.push_back(piece[i + static_cast<std::size_t>(k * strides[static_cast<std::size_t>(m)])]);
      }
      piece[i] = reduce_pieces(along, partial->op);
    }
  }
  for (std::size_t i = 0; i < piece.size(); ++i) {
    // A replica (or a reduced Partial) is counted once: coordinate 0 along those dims.
    bool contributes = true;
    for (int m = 0; m < mesh.ndim(); ++m) {
      if (!std::holds_alternative<Shard>(placements[static_cast<std::size_t>(m)]) &&
          coordinate(i, m) != 0) {
        contributes = false;
      }
    }
    if (!contributes) continue;
    slice_block(full, piece[i].sizes().vec(), offsets[i]).copy_(piece[i]);
  }
  return full;
}

}  // namespace detail

DTensor DTensor::reduce_partials() const {
  if (!has_partial(placements_)) return *this;
  std::vector<Placement> placements = placements_;
  for (auto& p : placements) {
    if (std::holds_alternative<Partial>(p)) p = Replicate{};
  }
  if (!mesh_->contains(mesh_->my_rank())) return DTensor(local_, mesh_, placements, global_shape_);
  at::Tensor local = local_;
  const std::int64_t nbytes = local.numel() * static_cast<std::int64_t>(c10::elementSize(dtype()));
  for (int m = 0; m < mesh_->ndim(); ++m) {
    const auto* partial = std::get_if<Partial>(&placements_[static_cast<std::size_t>(m)]);
    if (partial == nullptr) continue;
    // Along a Partial dim every member holds a piece of the same extent. Each first states its
    // dtype and size, so that a member holding another dtype is an error on every member, not
    // a collective of mismatched sizes.
    struct Piece {
      std::int64_t dtype;
      std::int64_t nbytes;
    };
    const auto heard = detail::all_gather_value(
        mesh_->group(m), Piece{static_cast<std::int64_t>(dtype()), nbytes});
    for (std::size_t k = 0; k < heard.size(); ++k) {
      const Piece& theirs = heard[k];
      if (theirs.dtype == static_cast<std::int64_t>(dtype()) && theirs.nbytes == nbytes) continue;
      auto coord = mesh_->coordinate_of(mesh_->my_rank());
      coord[static_cast<std::size_t>(m)] = static_cast<std::int64_t>(k);
      throw ShardingError(
          "DTensor::reduce_partials: along mesh dim " + std::to_string(m) + " of " +
          mesh_->describe() + ", rank " + std::to_string(mesh_->rank_at(coord)) + " holds " +
          c10::toString(static_cast<at::ScalarType>(theirs.dtype)) + " (" +
          std::to_string(theirs.nbytes) + " bytes) and rank " + std::to_string(mesh_->my_rank()) +
          " holds " + c10::toString(dtype()) + " (" + std::to_string(nbytes) + " bytes)");
    }
    const auto got = detail::all_gather_bytes(
        mesh_->group(m), detail::as_bytes(local),
        std::vector<std::int64_t>(static_cast<std::size_t>(mesh_->size(m)), nbytes));
    std::vector<at::Tensor> along;
    for (const auto& g : got) along.push_back(detail::from_bytes(g, dtype(), local.sizes()).to(local.device()));
    local = reduce_pieces(along, partial->op);
  }
  return DTensor(local, mesh_, std::move(placements), global_shape_);
}

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
    // As PyTorch: an empty local tensor (dtype and device kept) on a rank outside the mesh.
    at::Tensor none = whole.defined() ? at::empty({0}, whole.options()) : at::Tensor();
    return DTensor(none, mesh, std::move(placements), whole.defined() ? whole.sizes().vec()
                                                                      : std::vector<std::int64_t>{});
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
  check_partial_dtype(placements, local.scalar_type());
  detail::partial_piece(local, placements, coord);
  return DTensor(local, std::move(mesh), std::move(placements), global);
}

}  // namespace c10dtest
