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

// The hash as 16 hex digits.
inline std::string hex_hash(std::uint64_t h) {
  static const char* digits = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) out[static_cast<std::size_t>(i)] = digits[h & 15];
  return out;
}

}  // namespace c10dtest::detail
