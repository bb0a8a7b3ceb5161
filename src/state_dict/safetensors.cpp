// The safetensors header: parsed with nlohmann::json, every number checked before it is used.
#include "state_dict/safetensors.hpp"

#include <torch/version.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "c10dtest/state_dict_file.hpp"

namespace c10dtest::detail::safetensors {
namespace {

using Json = nlohmann::ordered_json;

// Deeper than any valid header (root object, entry object, shape or offsets array): anything
// beyond is refused while parsing, before a deep tree is built.
constexpr int kMaxDepth = 3;

struct DtypeInfo {
  const char* name;
  bool supported;
  c10::ScalarType dtype;
};

// Every dtype of the safetensors specification; the ones this LibTorch has no type for are
// known but unsupported.
const std::vector<DtypeInfo>& dtypes() {
  static const std::vector<DtypeInfo> all = {
      {"BOOL", true, c10::ScalarType::Bool},
      {"U8", true, c10::ScalarType::Byte},
      {"I8", true, c10::ScalarType::Char},
      {"I16", true, c10::ScalarType::Short},
      {"I32", true, c10::ScalarType::Int},
      {"I64", true, c10::ScalarType::Long},
      {"F16", true, c10::ScalarType::Half},
      {"BF16", true, c10::ScalarType::BFloat16},
      {"F32", true, c10::ScalarType::Float},
      {"F64", true, c10::ScalarType::Double},
      {"C64", true, c10::ScalarType::ComplexFloat},
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
      {"F8_E4M3", true, c10::ScalarType::Float8_e4m3fn},
      {"F8_E5M2", true, c10::ScalarType::Float8_e5m2},
#else
      {"F8_E4M3", false, c10::ScalarType::Undefined},
      {"F8_E5M2", false, c10::ScalarType::Undefined},
#endif
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
      {"U16", true, c10::ScalarType::UInt16},
      {"U32", true, c10::ScalarType::UInt32},
      {"U64", true, c10::ScalarType::UInt64},
#else
      {"U16", false, c10::ScalarType::Undefined},
      {"U32", false, c10::ScalarType::Undefined},
      {"U64", false, c10::ScalarType::Undefined},
#endif
      {"F8_E8M0", false, c10::ScalarType::Undefined},
      {"F6_E2M3", false, c10::ScalarType::Undefined},
      {"F6_E3M2", false, c10::ScalarType::Undefined},
      {"F4", false, c10::ScalarType::Undefined},
  };
  return all;
}

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw FileFormatError(file + ": " + what);
}

std::string shown(const std::string& s) {
  std::string out = "'";
  for (char c : s.substr(0, 80)) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  return out + (s.size() > 80 ? "...'" : "'");
}

// A non-negative integer that fits int64 (shapes) or uint64 (offsets).
bool as_count(const Json& j, std::uint64_t limit, std::uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<std::uint64_t>();
  } else if (j.is_number_integer()) {
    const auto v = j.get<std::int64_t>();
    if (v < 0) return false;
    *out = static_cast<std::uint64_t>(v);
  } else {
    return false;
  }
  return *out <= limit;
}

TensorEntry parse_entry(const std::string& file, const std::string& name, const Json& j) {
  const std::string where = "tensor " + shown(name);
  if (!j.is_object()) fail(file, where + ": is " + j.type_name() + ", not an object");
  TensorEntry e;
  e.name = name;
  auto field = [&](const char* f) -> const Json& {
    auto it = j.find(f);
    if (it == j.end()) fail(file, where + ": no \"" + f + "\"");
    return *it;
  };
  const Json& dtype = field("dtype");
  if (!dtype.is_string()) fail(file, where + ": dtype is " + dtype.type_name() + ", not a string");
  e.dtype_name = dtype.get<std::string>();
  const auto& all = dtypes();
  auto info = std::find_if(all.begin(), all.end(),
                           [&](const DtypeInfo& d) { return e.dtype_name == d.name; });
  if (info == all.end()) fail(file, where + ": unknown dtype " + shown(e.dtype_name));
  if (!info->supported) {
    fail(file, where + ": dtype " + e.dtype_name + " has no type in LibTorch " TORCH_VERSION);
  }
  e.dtype = info->dtype;

  const Json& shape = field("shape");
  if (!shape.is_array()) fail(file, where + ": shape is " + shape.type_name() + ", not an array");
  std::uint64_t elements = 1;
  bool overflow = false;
  for (const Json& d : shape) {
    std::uint64_t n = 0;
    if (!as_count(d, static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()), &n)) {
      fail(file, where + ": shape " + shape.dump() + " holds " + d.dump() +
                     ", not a non-negative integer");
    }
    e.shape.push_back(static_cast<std::int64_t>(n));
    if (n != 0 && elements > std::numeric_limits<std::uint64_t>::max() / n) overflow = true;
    elements = overflow ? 0 : elements * n;
  }
  const Json& offsets = field("data_offsets");
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
  if (!offsets.is_array() || offsets.size() != 2 ||
      !as_count(offsets[0], std::numeric_limits<std::uint64_t>::max(), &begin) ||
      !as_count(offsets[1], std::numeric_limits<std::uint64_t>::max(), &end)) {
    fail(file, where + ": data_offsets " + offsets.dump() +
                   " is not [begin, end] of non-negative integers");
  }
  if (end < begin) {
    fail(file, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   "] end before they begin");
  }
  e.begin = begin;
  e.end = end;
  const auto item = static_cast<std::uint64_t>(c10::elementSize(e.dtype));
  std::string shape_text = shape.dump();
  if (overflow || (elements != 0 && elements > std::numeric_limits<std::uint64_t>::max() / item)) {
    fail(file, where + ": shape " + shape_text + " has more bytes than any file");
  }
  if (elements * item != end - begin) {
    fail(file, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   "] hold " + std::to_string(end - begin) + " bytes, but shape " + shape_text +
                   " of " + e.dtype_name + " needs " + std::to_string(elements * item));
  }
  return e;
}

}  // namespace

Header parse(const std::string& file, const char* prefix, std::uint64_t prefix_size,
             std::uint64_t file_size, std::int64_t max_header_bytes) {
  if (file_size < 8) {
    fail(file, "truncated: " + std::to_string(file_size) +
                   " bytes, fewer than the 8 of a safetensors header length");
  }
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(prefix[i]);
  if (max_header_bytes >= 0 && n > static_cast<std::uint64_t>(max_header_bytes)) {
    fail(file, "header too large: " + std::to_string(n) + " bytes, more than the limit of " +
                   std::to_string(max_header_bytes) + " (ReadFileOptions::max_header_bytes)");
  }
  if (n > file_size - 8) {
    fail(file, "truncated: the header claims " + std::to_string(n) + " bytes, the file has " +
                   std::to_string(file_size - 8) + " after the length");
  }
  if (prefix_size < 8 + n) fail(file, "internal: header bytes not read");
  const char* text = prefix + 8;
  if (n == 0 || text[0] != '{') fail(file, "the header does not start with '{': not safetensors");

  // Nesting is bounded while parsing, and duplicate names are refused (a JSON parser keeps one of
  // them silently; the safetensors library refuses them too).
  std::set<std::string> names;
  const auto callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if ((event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start) &&
        depth >= kMaxDepth) {
      fail(file, "header: nested deeper than a safetensors header is");
    }
    if (event == Json::parse_event_t::key && depth == 1 &&
        !names.insert(parsed.get<std::string>()).second) {
      fail(file, "header: name " + shown(parsed.get<std::string>()) + " appears twice");
    }
    return true;
  };
  Json root;
  try {
    // Trailing spaces pad the header to 8 bytes in files the safetensors library writes.
    std::size_t len = static_cast<std::size_t>(n);
    while (len > 0 && text[len - 1] == ' ') --len;
    root = Json::parse(text, text + len, callback, /*allow_exceptions=*/true);
  } catch (const Json::exception& e) {
    fail(file, std::string("header is not valid JSON: ") + e.what());
  }
  if (!root.is_object()) fail(file, "header is not a JSON object");

  Header h;
  h.data_start = 8 + n;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) fail(file, "__metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          fail(file, "__metadata__ entry " + shown(m.key()) + " is " + m.value().type_name() +
                         ", not a string");
        }
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_entry(file, it.key(), it.value()));
  }

  // The byte ranges must tile the data section: sorted by begin, each starts where the previous
  // ended, the last ends at the end of the file.
  const std::uint64_t data_size = file_size - h.data_start;
  std::vector<const TensorEntry*> order;
  for (const auto& e : h.tensors) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t at = 0;
  const TensorEntry* previous = nullptr;
  auto range = [](const TensorEntry* e) {
    return "tensor " + shown(e->name) + " [" + std::to_string(e->begin) + ", " +
           std::to_string(e->end) + "]";
  };
  for (const TensorEntry* e : order) {
    if (e->end > data_size) {
      fail(file, range(e) + " lies beyond the data section's " + std::to_string(data_size) +
                     " bytes (truncated file or offsets out of range)");
    }
    if (e->begin < at) fail(file, range(e) + " overlaps " + range(previous));
    if (e->begin > at) {
      fail(file, range(e) + " leaves a gap of " + std::to_string(e->begin - at) + " bytes after " +
                     (previous ? range(previous) : std::string("the header")));
    }
    at = e->end;
    if (e->end > e->begin || previous == nullptr) previous = e;
  }
  if (at != data_size) {
    fail(file, std::to_string(data_size - at) + " bytes after the last tensor's data" +
                   (previous ? " (" + range(previous) + ")" : std::string()) +
                   ": not part of any tensor");
  }
  return h;
}

std::string dtype_name(c10::ScalarType dtype, const std::string& what) {
  for (const auto& d : dtypes()) {
    if (d.supported && d.dtype == dtype) return d.name;
  }
  throw FileFormatError(what + ": dtype " + c10::toString(dtype) + " has no safetensors type");
}

}  // namespace c10dtest::detail::safetensors
