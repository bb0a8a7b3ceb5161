// Private: the one way c10dtest cuts a block out of a tensor.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace c10dtest::detail {

// The view of `t` that a piece with `sizes` at `offsets` (one per leading dim) covers; dims that
// the piece covers whole are not narrowed.
inline at::Tensor slice_block(const at::Tensor& t, at::IntArrayRef sizes,
                              at::IntArrayRef offsets) {
  at::Tensor out = t;
  for (std::size_t d = 0; d < offsets.size() && d < sizes.size(); ++d) {
    const auto dim = static_cast<std::int64_t>(d);
    if (offsets[d] == 0 && sizes[d] == out.size(dim)) continue;
    out = out.narrow(dim, offsets[d], sizes[d]);
  }
  return out;
}

}  // namespace c10dtest::detail
