// Private: how c10dtest writes shapes and offsets in messages ("[7, 5]").
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <sstream>
#include <string>

namespace c10dtest::detail {

inline std::string shape_text(c10::ArrayRef<std::int64_t> values) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < values.size(); ++i) os << (i ? ", " : "") << values[i];
  os << ']';
  return os.str();
}

}  // namespace c10dtest::detail
