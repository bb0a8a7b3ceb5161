// Private: c10dtest's JSON entries in safetensors metadata ("c10dtest.values", "c10dtest.shards"),
// parsed by the reader (state_dict_file.cpp) and by read_sharded_state_dict (sharded_file.cpp).
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>

#include "c10dtest/state_dict_file.hpp"

namespace c10dtest::detail {

// The metadata entry `name` of `file` as a JSON object; an empty object when the file has none.
// FileFormatError naming the file and entry when it is not JSON or not an object.
inline nlohmann::ordered_json metadata_object(const std::string& file,
                                              const std::map<std::string, std::string>& metadata,
                                              const char* name) {
  const auto it = metadata.find(name);
  if (it == metadata.end()) return nlohmann::ordered_json::object();
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(it->second);
  } catch (const nlohmann::ordered_json::exception& e) {
    throw FileFormatError(file + ": " + name + " is not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw FileFormatError(file + ": " + name + " is not a JSON object");
  return j;
}

}  // namespace c10dtest::detail
