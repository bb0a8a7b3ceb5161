// Private: what every Context's group making shares.
#pragma once

#include <string>
#include <vector>

namespace c10dtest::detail {

// ConfigError unless `groups` are non-empty, disjoint and within a world of `world_size`.
void check_subgroups(const std::vector<std::vector<int>>& groups, int world_size);
// "group [0, 2]": a group's name in error messages.
std::string group_name(const std::vector<int>& ranks);

}  // namespace c10dtest::detail
