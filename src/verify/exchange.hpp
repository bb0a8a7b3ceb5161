// Private: the verifier's small exchanges of text among the ranks of its context.
#pragma once

#include <string>
#include <vector>

#include "c10dtest/context.hpp"

namespace c10dtest {
struct VerifyOptions;
class StateDict;
}

namespace c10dtest::detail {

// The ranks that verify together: options.context, else the mesh's of the first DTensor in
// `dist`, else current_context(), else none (this process alone).
ContextPtr verify_context(const VerifyOptions& options, const StateDict& dist);

// Every rank's `value`, by rank (collective over `context`; just `value` without one or at
// world size 1). `what` names the exchange (in the runner, in the control-plane tag).
std::vector<std::string> exchange_text(Context* context, const std::string& what,
                                       const std::string& value);

}  // namespace c10dtest::detail
