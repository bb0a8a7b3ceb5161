// Placements of a distributed tensor along one mesh dimension, as in PyTorch's DTensor:
// Shard(dim) splits tensor dim `dim` with torch.chunk semantics, Replicate copies the whole
// tensor, Partial(sum) holds addends whose sum is the tensor.
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
// Only the sum reduction is supported.
struct Partial {
  bool operator==(const Partial&) const { return true; }
};

using Placement = std::variant<Shard, Replicate, Partial>;

// "Shard(0)", "Replicate()", "Partial(sum)"; lists as "[Shard(0), Replicate()]".
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
