// Private: the torch.save half of state_dict_file.hpp (torch_save.cpp), kept apart because
// LibTorch's pickler headers are heavy.
#pragma once

#include <string>
#include <vector>

#include "c10dtest/state_dict_file.hpp"

namespace c10dtest::detail {

// The object a torch.save zip archive holds, as a StateDict (a dict at the top). FileFormatError
// naming `file` for anything else.
StateDict read_torch_save(const std::string& file);
// The bytes of a torch.save zip archive holding `sd` as a dict. FileFormatError names a value
// that cannot be written (without the file's name: the caller adds it).
std::vector<char> write_torch_save(const StateDict& sd, const WriteFileOptions& options);

}  // namespace c10dtest::detail
