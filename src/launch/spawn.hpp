// Self-spawn supervisor (launch layer, private).
#pragma once

#include <string>
#include <vector>

#include "c10dtest/options.hpp"  // exit codes

namespace c10dtest::detail {

// Runs `world_size` copies of this executable with `args` as ranks, supervises them and returns
// the run's exit code. A rank killed by a signal, or one that exits non-zero while its peers keep
// running, is named on stderr and the others are ended; no rank outlives the parent.
// `first_fault`, when given, receives what ended the run that way ("rank 1 of 4 (pid 12) was
// killed by signal 9 (Killed)"), or stays empty.
int spawn_and_supervise(const std::vector<std::string>& args, int world_size,
                        std::string* first_fault = nullptr);

}  // namespace c10dtest::detail
