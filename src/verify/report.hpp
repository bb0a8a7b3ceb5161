// Private (the verifier): every rank's findings merged into one message, the same on every rank.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "c10dtest/verify.hpp"
#include "findings.hpp"

namespace c10dtest::detail::verifier {

// "every rank", "rank 2", "ranks 0, 3".
std::string ranks_text(const std::vector<int>& ranks, int world_size);
// The verdict on `by_rank` (findings indexed by rank).
::testing::AssertionResult report(const std::vector<std::vector<Finding>>& by_rank,
                                  std::int64_t reference_keys, const VerifyOptions& options);

}  // namespace c10dtest::detail::verifier
