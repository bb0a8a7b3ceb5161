// Private (the verifier): what checking one rank finds, and its codec (findings travel between
// ranks in both strategies).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scan.hpp"

namespace c10dtest::detail::verifier {

enum class Kind { kMissing = 0, kUnexpected = 1, kProblem = 2, kValues = 3 };

struct Finding {
  std::string path;
  Kind kind = Kind::kProblem;
  std::string text;  // kProblem: the message after the key; kValues: the key's description
  MismatchStats stats;
  std::vector<std::int64_t> first_offsets;  // the piece holding stats.first
  std::vector<std::int64_t> first_sizes;
  bool whole = true;  // that piece is the whole tensor
  std::int64_t replica = 0;  // LeafInfo::replica of the rank that holds the pieces
};

Finding finding(const std::string& path, Kind kind, std::string text = "");
std::string encode_findings(const std::vector<Finding>& findings, std::int64_t reference_keys);
std::vector<Finding> decode_findings(const std::string& data, std::int64_t* reference_keys);

}  // namespace c10dtest::detail::verifier
