// Private: the pickle of torch.save's data.pkl, both directions (torch_save.cpp is the archive).
// The reader knows what torch.save writes for state dicts (protocols 2 to 5): dicts
// (OrderedDict too), lists, tuples, ints, floats, bools, strings, None, and tensors
// (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_from_type_v2 over torch.<T>Storage persistent
// ids). Anything else becomes a value that is an error only if the state dict holds it, naming
// its key. Objects are freed without recursion; nesting beyond 100 levels is refused.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "c10dtest/state_dict_file.hpp"

namespace c10dtest::detail::pickle {

// A pickle that is malformed or not one torch.save writes ("the pickle ends early").
class PickleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A 1-D tensor of `numel` elements of `dtype` over the storage record `key` ("0"); may throw
// PickleError.
using StorageLoader =
    std::function<at::Tensor(const std::string& key, c10::ScalarType dtype, std::int64_t numel)>;

// The dict the pickle holds. PickleError for a malformed pickle; FileFormatError (without a
// file name) for a value a state dict cannot hold, naming its key.
StateDict read(const char* data, std::size_t size, const StorageLoader& load_storage);

// The protocol-2 pickle of `sd` as Python's torch.save writes it: _rebuild_tensor_v2 over
// ('storage', torch.<T>Storage, key, 'cpu', numel), so that torch.load(weights_only=True) reads
// it. `storages` gets each tensor (CPU, contiguous) for record data/<i>. FileFormatError names a
// value it cannot write (a DTensor, an undefined or meta tensor).
std::string write(const StateDict& sd, bool integer_keys, std::vector<at::Tensor>* storages);

}  // namespace c10dtest::detail::pickle
