// Private: length-prefixed fields ("5:hello"), the encoding of everything c10dtest sends as text
// (rank results, state-dict structure). Any byte may appear inside a field.
#pragma once

#include <string>

#include "c10dtest/error.hpp"

namespace c10dtest::detail {

inline void put_field(std::string& out, const std::string& s) {
  out += std::to_string(s.size());
  out += ':';
  out += s;
}

class FieldReader {
 public:
  // `what` names the data in error messages ("rank result").
  FieldReader(const std::string& data, std::string what) : data_(data), what_(std::move(what)) {}

  bool done() const { return pos_ >= data_.size(); }

  std::string next() {
    const auto colon = data_.find(':', pos_);
    if (colon == std::string::npos || colon == pos_) {
      throw Error("malformed " + what_ + ": " + data_.substr(0, 80));
    }
    std::size_t n = 0;
    try {
      n = std::stoul(data_.substr(pos_, colon - pos_));
    } catch (const std::logic_error&) {
      throw Error("malformed " + what_ + ": " + data_.substr(0, 80));
    }
    if (colon + 1 + n > data_.size()) throw Error("truncated " + what_);
    std::string s = data_.substr(colon + 1, n);
    pos_ = colon + 1 + n;
    return s;
  }

  long long number() {
    const std::string s = next();
    try {
      std::size_t used = 0;
      const long long v = std::stoll(s, &used);
      if (used == s.size()) return v;
    } catch (const std::logic_error&) {
    }
    throw Error("malformed " + what_ + ": '" + s + "' is not a number");
  }

 private:
  const std::string& data_;
  std::string what_;
  std::size_t pos_ = 0;
};

}  // namespace c10dtest::detail
