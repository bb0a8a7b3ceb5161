// Private: the verifier's small exchanges of text over the control plane.
#pragma once

#include <string>
#include <vector>

namespace c10dtest::detail {

// Every rank's `value`, by rank (collective over the world; just `value` outside a distributed
// run). `what` names the exchange in the control-plane tag.
std::vector<std::string> exchange_text(const std::string& what, const std::string& value);

}  // namespace c10dtest::detail
