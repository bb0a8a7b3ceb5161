// Private: moving a state-dict tree's tensors to CPU (cpu_offload).
#pragma once

#include "c10dtest/state_dict.hpp"

namespace c10dtest::detail {

// Every Tensor of the tree, and every DTensor's local piece, moved to CPU (in place).
void offload_to_cpu(StateValue& value);

}  // namespace c10dtest::detail
