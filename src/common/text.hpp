// Private: how c10dtest writes shapes, offsets and rank lists in messages ("[7, 5]", "ranks 0, 2").
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace c10dtest::detail {

inline std::string shape_text(c10::ArrayRef<std::int64_t> values) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < values.size(); ++i) os << (i ? ", " : "") << values[i];
  os << ']';
  return os.str();
}

// "rank 2" or "ranks 0, 1, 3".
inline std::string rank_list(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (std::size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

// The first line of an exception's text (LibTorch appends a C++ stack to c10::Error's).
inline std::string first_line(const std::string& what) { return what.substr(0, what.find('\n')); }

}  // namespace c10dtest::detail
