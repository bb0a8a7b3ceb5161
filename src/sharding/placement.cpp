#include "c10dtest/placement.hpp"

#include <algorithm>
#include <sstream>

#include "c10dtest/error.hpp"

namespace c10dtest {

const char* to_string(PartialOp op) {
  switch (op) {
    case PartialOp::kAvg: return "avg";
    case PartialOp::kProduct: return "product";
    case PartialOp::kMax: return "max";
    case PartialOp::kMin: return "min";
    default: return "sum";
  }
}

std::string to_string(const Placement& p) {
  if (const auto* s = std::get_if<Shard>(&p)) return "Shard(" + std::to_string(s->dim) + ")";
  if (std::holds_alternative<Replicate>(p)) return "Replicate()";
  return std::string("Partial(") + to_string(std::get<Partial>(p).op) + ")";
}

std::string to_string(const std::vector<Placement>& ps) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < ps.size(); ++i) os << (i ? ", " : "") << to_string(ps[i]);
  os << ']';
  return os.str();
}

ChunkExtent chunk_extent(std::int64_t size, std::int64_t chunks, std::int64_t index) {
  if (size < 0 || chunks < 1 || index < 0 || index >= chunks) {
    throw Error("chunk_extent: bad arguments size=" + std::to_string(size) + " chunks=" +
                std::to_string(chunks) + " index=" + std::to_string(index));
  }
  const std::int64_t full = (size + chunks - 1) / chunks;
  const std::int64_t start = full * index;
  if (start >= size) return {size, 0};
  return {start, std::min(size, start + full) - start};
}

}  // namespace c10dtest
