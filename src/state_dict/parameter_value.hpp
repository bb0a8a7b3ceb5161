// Private: turning a state-dict value into what a (possibly sharded) parameter holds.
#pragma once

#include <string>

#include "c10dtest/model_state_dict.hpp"

namespace c10dtest::detail {

// The tensor to copy into a parameter laid out by `layout` (nullptr: an unsharded parameter). A
// DTensor laid out like the parameter gives its local piece; any other DTensor, or a
// ShardedTensor, is gathered (collective); a full tensor for a sharded parameter is checked
// against the layout's global shape ("size mismatch for <what>: ...") and sliced to this rank's
// piece. Undefined when `value` holds no tensor. The caller checks shape and dtype against the
// parameter itself.
at::Tensor tensor_for_parameter(const StateValue& value, const ParamLayout* layout,
                                const std::string& what);

}  // namespace c10dtest::detail
