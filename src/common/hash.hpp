// Private: c10dtest's one string hash (layouts, test lists, per-test seeds).
#pragma once

#include <cstdint>
#include <string>

namespace c10dtest::detail {

// FNV-1a (64 bit) of `s`, continuing from `h`.
constexpr std::uint64_t kFnvOffset = 1469598103934665603ULL;
inline std::uint64_t fnv1a(const std::string& s, std::uint64_t h = kFnvOffset) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

}  // namespace c10dtest::detail
