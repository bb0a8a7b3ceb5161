// Private: the safetensors header parser and writer (state_dict_file.hpp is the public face).
// The parser works on bytes so that tests can fuzz it without files.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace c10dtest::detail::safetensors {

struct TensorEntry {
  std::string name;
  std::string dtype_name;  // "F32"
  c10::ScalarType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // relative to the data section
  std::uint64_t end = 0;
};

struct Header {
  std::vector<TensorEntry> tensors;  // in the header's order
  std::map<std::string, std::string> metadata;
  std::uint64_t data_start = 0;  // 8 + header length
};

// Parses and checks the header of a safetensors file of `file_size` bytes whose first bytes are
// `prefix` (at least min(file_size, 8 + header length) of them). Throws FileFormatError naming
// `file` and the problem. Checks, as the safetensors specification and library do: the header
// length fits the file and max_header_bytes; the header is a JSON object (nesting bounded, no
// duplicate names); every entry has a known dtype, a shape of non-negative integers and
// data_offsets [begin, end] with end - begin == elements * element size; the entries' byte
// ranges tile the data section exactly (no overlap, no gap, nothing after the last).
Header parse(const std::string& file, const char* prefix, std::uint64_t prefix_size,
             std::uint64_t file_size, std::int64_t max_header_bytes);

// safetensors' name of a dtype ("F32"); FileFormatError (naming `what`) when safetensors has
// none (complex types: C64 is written for ComplexFloat, as safetensors 0.4+ reads it).
std::string dtype_name(c10::ScalarType dtype, const std::string& what);

}  // namespace c10dtest::detail::safetensors
