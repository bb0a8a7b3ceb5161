// Placements of a distributed tensor along one mesh dimension, as in PyTorch's DTensor:
// Shard(dim) splits tensor dim `dim` with torch.chunk semantics, Replicate copies the whole
// tensor, Partial(op) holds values whose reduction (sum, by default) over the mesh dimension is
// the tensor.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace c10dtest {

struct Shard {
  std::int64_t dim = 0;
  bool operator==(const Shard& o) const { return dim == o.dim; }
};
struct Replicate {
  bool operator==(const Replicate&) const { return true; }
};
// PyTorch's Partial(reduce_op): "sum" (the default), "avg", "product", "max" and "min". Reducing
// a bool tensor: sum and max are "or", product and min are "and"; avg needs a floating or
// complex dtype.
enum class PartialOp { kSum, kAvg, kProduct, kMax, kMin };
struct Partial {
  PartialOp op = PartialOp::kSum;
  bool operator==(const Partial& o) const { return op == o.op; }
};
// "sum", "avg", "product", "max", "min".
const char* to_string(PartialOp op);

using Placement = std::variant<Shard, Replicate, Partial>;

// "Shard(0)", "Replicate()", "Partial(sum)", "Partial(max)"; lists as "[Shard(0), Replicate()]".
std::string to_string(const Placement& p);
std::string to_string(const std::vector<Placement>& ps);

// The piece of a dimension of `size` that chunk `index` of `chunks` holds (torch.chunk, as DTensor
// uses it): chunks of ceil(size / chunks) elements, the last ones shorter or empty. An empty
// chunk's offset is `size`.
struct ChunkExtent {
  std::int64_t offset = 0;
  std::int64_t length = 0;
};
ChunkExtent chunk_extent(std::int64_t size, std::int64_t chunks, std::int64_t index);

}  // namespace c10dtest
