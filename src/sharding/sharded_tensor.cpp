#include "c10dtest/sharded_tensor.hpp"

#include <algorithm>
#include <map>
#include <sstream>

#include "assemble.hpp"
#include "comm/bytes.hpp"
#include "c10dtest/context.hpp"
#include "common/tensor.hpp"
#include "common/text.hpp"

namespace c10dtest {

namespace {

std::string shard_text(const ShardMetadata& m, std::size_t index) {
  return "shard " + std::to_string(index) + " (rank " + std::to_string(m.rank) + ", offsets " +
         detail::shape_text(m.offsets) + ", sizes " + detail::shape_text(m.sizes) + ")";
}

std::int64_t volume(const std::vector<std::int64_t>& sizes) {
  std::int64_t v = 1;
  for (auto s : sizes) v *= s;
  return v;
}

bool overlap(const ShardMetadata& a, const ShardMetadata& b) {
  for (std::size_t d = 0; d < a.sizes.size(); ++d) {
    const auto lo = std::max(a.offsets[d], b.offsets[d]);
    const auto hi = std::min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d]);
    if (lo >= hi) return false;
  }
  return true;
}

// Metadata travels as int64: [ndim, dtype, nshards, (offsets, sizes)*].
std::vector<std::int64_t> encode(const std::vector<LocalShard>& shards, std::size_t ndim,
                                 at::ScalarType dtype) {
  std::vector<std::int64_t> out{static_cast<std::int64_t>(ndim), static_cast<std::int64_t>(dtype),
                                static_cast<std::int64_t>(shards.size())};
  for (const auto& s : shards) {
    out.insert(out.end(), s.metadata.offsets.begin(), s.metadata.offsets.end());
    out.insert(out.end(), s.metadata.sizes.begin(), s.metadata.sizes.end());
  }
  return out;
}

}  // namespace

void validate_tiling(const ShardedTensorMetadata& meta, int group_size) {
  const std::size_t ndim = meta.global_shape.size();
  for (std::size_t i = 0; i < meta.shards.size(); ++i) {
    const auto& m = meta.shards[i];
    if (m.offsets.size() != ndim || m.sizes.size() != ndim) {
      throw ShardingError(shard_text(m, i) + " has " + std::to_string(m.offsets.size()) +
                          " offsets and " + std::to_string(m.sizes.size()) +
                          " sizes for a tensor of " + std::to_string(ndim) + " dims");
    }
    if (m.rank < 0 || m.rank >= group_size) {
      throw ShardingError(shard_text(m, i) + " belongs to a rank outside the group of " +
                          std::to_string(group_size));
    }
    for (std::size_t d = 0; d < ndim; ++d) {
      if (m.offsets[d] < 0 || m.sizes[d] < 0 || m.offsets[d] + m.sizes[d] > meta.global_shape[d]) {
        throw ShardingError(shard_text(m, i) + " is out of bounds in dim " + std::to_string(d) +
                            " of global shape " + detail::shape_text(meta.global_shape));
      }
    }
  }
  for (std::size_t i = 0; i < meta.shards.size(); ++i) {
    if (volume(meta.shards[i].sizes) == 0) continue;
    for (std::size_t j = i + 1; j < meta.shards.size(); ++j) {
      if (volume(meta.shards[j].sizes) > 0 && overlap(meta.shards[i], meta.shards[j])) {
        throw ShardingError(shard_text(meta.shards[i], i) + " overlaps " +
                            shard_text(meta.shards[j], j));
      }
    }
  }
  std::int64_t covered = 0;
  for (const auto& m : meta.shards) covered += volume(m.sizes);
  const std::int64_t total = volume(meta.global_shape);
  if (covered == total) return;
  // Not overlapping and not covering everything: find the first uncovered index on the grid of
  // shard boundaries.
  std::vector<std::vector<std::int64_t>> cuts(ndim);
  for (std::size_t d = 0; d < ndim; ++d) {
    cuts[d] = {0, meta.global_shape[d]};
    for (const auto& m : meta.shards) {
      cuts[d].push_back(m.offsets[d]);
      cuts[d].push_back(m.offsets[d] + m.sizes[d]);
    }
    std::sort(cuts[d].begin(), cuts[d].end());
    cuts[d].erase(std::unique(cuts[d].begin(), cuts[d].end()), cuts[d].end());
  }
  // Odometer over the grid cells; a cell is uncovered iff its first point is.
  std::vector<std::size_t> cell(ndim, 0);
  for (;;) {
    std::vector<std::int64_t> point(ndim);
    bool real_cell = true;
    for (std::size_t d = 0; d < ndim; ++d) {
      point[d] = cuts[d][cell[d]];
      if (point[d] >= meta.global_shape[d]) real_cell = false;
    }
    const bool hit = std::any_of(meta.shards.begin(), meta.shards.end(), [&](const ShardMetadata& m) {
      for (std::size_t d = 0; d < ndim; ++d) {
        if (point[d] < m.offsets[d] || point[d] >= m.offsets[d] + m.sizes[d]) return false;
      }
      return true;
    });
    if (real_cell && !hit) {
      throw ShardingError("the shards cover " + std::to_string(covered) + " of " +
                          std::to_string(total) + " elements of global shape " +
                          detail::shape_text(meta.global_shape) + "; the first gap is at index " +
                          detail::shape_text(point));
    }
    int d = static_cast<int>(ndim) - 1;
    while (d >= 0 && ++cell[static_cast<std::size_t>(d)] == cuts[static_cast<std::size_t>(d)].size()) {
      cell[static_cast<std::size_t>(d)] = 0;
      --d;
    }
    if (d < 0) break;
  }
  throw ShardingError("the shards cover " + std::to_string(covered) + " of " +
                      std::to_string(total) + " elements of global shape " +
                      detail::shape_text(meta.global_shape));
}

ShardedTensor ShardedTensor::from_local_shards(std::vector<LocalShard> local_shards,
                                               std::vector<std::int64_t> global_shape,
                                               ProcessGroupPtr pg) {
  const int me = pg->getRank();
  at::ScalarType dtype = at::kFloat;
  bool have_dtype = false;
  for (std::size_t i = 0; i < local_shards.size(); ++i) {
    auto& s = local_shards[i];
    s.metadata.rank = me;
    if (!s.tensor.defined() || s.tensor.sizes().vec() != s.metadata.sizes) {
      throw ShardingError("rank " + std::to_string(me) + ": local " + shard_text(s.metadata, i) +
                          " holds a tensor of shape " +
                          (s.tensor.defined() ? detail::shape_text(s.tensor.sizes().vec()) : "<undefined>"));
    }
    if (have_dtype && s.tensor.scalar_type() != dtype) {
      throw ShardingError("rank " + std::to_string(me) + ": local shards mix " +
                          c10::toString(dtype) + " and " + c10::toString(s.tensor.scalar_type()));
    }
    dtype = s.tensor.scalar_type();
    have_dtype = true;
  }
  const auto encoded = encode(local_shards, global_shape.size(), have_dtype ? dtype : at::kFloat);
  at::Tensor mine = at::tensor(encoded, at::kLong);
  const auto gathered = detail::all_gather_bytes(pg, detail::as_bytes(mine));

  ShardedTensor st;
  st.local_ = std::move(local_shards);
  st.pg_ = std::move(pg);
  st.meta_.global_shape = global_shape;
  bool dtype_known = false;
  for (int r = 0; r < static_cast<int>(gathered.size()); ++r) {
    // Read on the host (an NCCL group gathers on the GPU).
    const at::Tensor ints = detail::from_bytes(gathered[static_cast<std::size_t>(r)].cpu(),
                                               at::kLong,
                                               {gathered[static_cast<std::size_t>(r)].numel() / 8});
    const auto* p = ints.data_ptr<std::int64_t>();
    const auto ndim = static_cast<std::size_t>(p[0]);
    const auto rank_dtype = static_cast<at::ScalarType>(p[1]);
    const auto n = p[2];
    if (ndim != global_shape.size()) {
      throw ShardingError("rank " + std::to_string(r) + " describes a tensor of " +
                          std::to_string(ndim) + " dims, rank " + std::to_string(me) + " of " +
                          std::to_string(global_shape.size()));
    }
    if (n > 0) {
      if (dtype_known && rank_dtype != st.meta_.dtype) {
        throw ShardingError("rank " + std::to_string(r) + " holds " + c10::toString(rank_dtype) +
                            " shards, others " + c10::toString(st.meta_.dtype));
      }
      st.meta_.dtype = rank_dtype;
      dtype_known = true;
    }
    std::size_t k = 3;
    for (std::int64_t i = 0; i < n; ++i) {
      ShardMetadata m;
      m.rank = r;
      m.offsets.assign(p + k, p + k + ndim);
      k += ndim;
      m.sizes.assign(p + k, p + k + ndim);
      k += ndim;
      st.meta_.shards.push_back(std::move(m));
    }
  }
  return st;
}

ShardedTensor ShardedTensor::from_metadata(std::vector<LocalShard> local_shards,
                                           ShardedTensorMetadata metadata, ProcessGroupPtr pg) {
  ShardedTensor st;
  st.local_ = std::move(local_shards);
  st.meta_ = std::move(metadata);
  st.pg_ = std::move(pg);
  const int me = st.pg_->getRank();
  std::size_t listed = 0;
  for (const auto& m : st.meta_.shards) listed += m.rank == me ? 1 : 0;
  if (listed != st.local_.size()) {
    throw ShardingError("rank " + std::to_string(me) + " holds " +
                        std::to_string(st.local_.size()) + " local shards but the metadata lists " +
                        std::to_string(listed));
  }
  for (std::size_t i = 0; i < st.local_.size(); ++i) {
    const auto& s = st.local_[i];
    if (!s.tensor.defined() || s.tensor.sizes().vec() != s.metadata.sizes) {
      throw ShardingError("rank " + std::to_string(me) + ": local " + shard_text(s.metadata, i) +
                          " holds a tensor of shape " +
                          (s.tensor.defined() ? detail::shape_text(s.tensor.sizes().vec()) : "<undefined>"));
    }
  }
  return st;
}

void ShardedTensor::validate() const {
  validate_tiling(meta_, pg_->getSize());
  for (std::size_t i = 0; i < local_.size(); ++i) {
    if (local_[i].tensor.scalar_type() != meta_.dtype) {
      throw ShardingError("rank " + std::to_string(pg_->getRank()) + ": local " +
                          shard_text(local_[i].metadata, i) + " is " +
                          c10::toString(local_[i].tensor.scalar_type()) + ", the tensor is " +
                          c10::toString(meta_.dtype));
    }
  }
}

namespace detail {

ProcessGroupPtr group_of(const ShardedTensor& t) { return t.process_group(); }

std::int64_t piece_bytes(const ShardedTensor& t, int r) {
  std::int64_t n = 0;
  for (const auto& m : t.metadata().shards) {
    if (m.rank == r) n += volume(m.sizes);
  }
  return n * static_cast<std::int64_t>(c10::elementSize(t.metadata().dtype));
}

at::Tensor my_piece(const ShardedTensor& t) {
  // Through CPU: a rank without shards has no device to agree on with the others.
  std::vector<at::Tensor> parts;
  for (const auto& s : t.local_shards()) parts.push_back(as_bytes(s.tensor.cpu()));
  return parts.empty() ? at::empty({0}, at::kByte) : at::cat(parts);
}

at::Tensor assemble(const ShardedTensor& t, const std::vector<at::Tensor>& pieces) {
  const auto& meta = t.metadata();
  const auto element = static_cast<std::int64_t>(c10::elementSize(meta.dtype));
  // On the device of this rank's shards; for a rank without any, the current context's device,
  // else where the group exchanges (CPU for Gloo, the GPU for NCCL).
  const c10::Device home = !t.local_shards().empty() ? t.local_shards().front().tensor.device()
                           : has_context()           ? current_context()->device()
                                                     : exchange_device(t.process_group());
  at::Tensor full = at::empty(meta.global_shape, at::TensorOptions().dtype(meta.dtype).device(home));
  std::vector<std::int64_t> cursor(pieces.size(), 0);
  for (const auto& m : meta.shards) {
    const std::int64_t n = volume(m.sizes) * element;
    const auto r = static_cast<std::size_t>(m.rank);
    at::Tensor piece = from_bytes(pieces[r].narrow(0, cursor[r], n), meta.dtype, m.sizes);
    cursor[r] += n;
    slice_block(full, m.sizes, m.offsets).copy_(piece);
  }
  return full;
}

}  // namespace detail

at::Tensor ShardedTensor::full_tensor() const {
  validate();
  std::vector<std::int64_t> sizes;
  for (int r = 0; r < pg_->getSize(); ++r) sizes.push_back(detail::piece_bytes(*this, r));
  return detail::assemble(*this, detail::all_gather_bytes(pg_, detail::my_piece(*this), sizes));
}

std::string ShardedTensor::describe() const {
  std::ostringstream os;
  os << "ShardedTensor(shape=" << detail::shape_text(meta_.global_shape)
     << ", dtype=" << c10::toString(meta_.dtype) << ", " << meta_.shards.size() << " shards)";
  return os.str();
}

}  // namespace c10dtest
