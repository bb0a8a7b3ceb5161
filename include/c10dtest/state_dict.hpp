// A state dict: an ordered tree keyed by fully-qualified names (FQNs), holding tensors, DTensors,
// ShardedTensors, scalars, strings, none, lists and nested dicts (optimizer state dicts need
// them). Printing shows shapes and dtypes, never tensor values.
//
//   c10dtest::StateDict sd;
//   sd.insert("l1.weight", at::ones({4, 4}));
//   sd.insert("step", std::int64_t{10});
//   std::cout << sd.describe();   // "l1.weight: Tensor[4, 4] Float cpu\nstep: 10\n"
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <variant>
#include <vector>

#include "c10dtest/dtensor.hpp"
#include "c10dtest/error.hpp"
#include "c10dtest/sharded_tensor.hpp"

namespace c10dtest {

class StateValue;

// A key is missing, or a value has another type than asked for.
class StateDictError : public Error {
 public:
  using Error::Error;
};

// Ordered map from key to StateValue; insertion order is kept, lookups are O(1).
class StateDict {
 public:
  StateDict();
  StateDict(const StateDict&);
  StateDict(StateDict&&) noexcept;
  StateDict& operator=(const StateDict&);
  StateDict& operator=(StateDict&&) noexcept;
  ~StateDict();

  std::size_t size() const { return keys_.size(); }
  bool empty() const { return keys_.empty(); }
  bool contains(const std::string& key) const { return index_.count(key) != 0; }
  // Keys in insertion order.
  const std::vector<std::string>& keys() const { return keys_; }

  // StateDictError naming the key (and up to 5 keys that are there) when missing.
  const StateValue& at(const std::string& key) const;
  StateValue& at(const std::string& key);
  // Value at insertion position `i`.
  const StateValue& value(std::size_t i) const;
  StateValue& value(std::size_t i);

  // Inserts at the end, or replaces in place when the key exists.
  void insert(const std::string& key, StateValue value);
  // Moves the value of `from` to `to` (at `from`'s position). StateDictError when `from` is
  // missing or `to` exists.
  void rename(const std::string& from, const std::string& to);
  bool erase(const std::string& key);

  // "key: Tensor[7, 5] Float cpu", one entry a line, nested dicts indented. At most `limit`
  // entries per level are shown.
  std::string describe(std::size_t limit = 200) const;

 private:
  std::vector<std::string> keys_;
  std::vector<StateValue> values_;
  std::unordered_map<std::string, std::size_t> index_;
};

using StateList = std::vector<StateValue>;

struct StateNone {
  bool operator==(const StateNone&) const { return true; }
};

class StateValue {
 public:
  using Variant = std::variant<StateNone, bool, std::int64_t, double, std::string, at::Tensor,
                               DTensor, ShardedTensor, StateList, StateDict>;

  StateValue() = default;
  StateValue(StateNone) {}
  StateValue(bool v) : v_(v) {}
  StateValue(int v) : v_(static_cast<std::int64_t>(v)) {}
  StateValue(std::int64_t v) : v_(v) {}
  StateValue(double v) : v_(v) {}
  StateValue(const char* v) : v_(std::string(v)) {}
  StateValue(std::string v) : v_(std::move(v)) {}
  StateValue(at::Tensor v) : v_(std::move(v)) {}
  StateValue(DTensor v) : v_(std::move(v)) {}
  StateValue(ShardedTensor v) : v_(std::move(v)) {}
  StateValue(StateList v) : v_(std::move(v)) {}
  StateValue(StateDict v) : v_(std::move(v)) {}

  template <typename T>
  bool is() const {
    return std::holds_alternative<T>(v_);
  }
  // The value as T; StateDictError naming both types otherwise.
  template <typename T>
  const T& as() const {
    if (const T* p = std::get_if<T>(&v_)) return *p;
    throw StateDictError(std::string("state value is ") + type_name() + ", not " +
                         type_name_of<T>());
  }
  template <typename T>
  T& as() {
    if (T* p = std::get_if<T>(&v_)) return *p;
    throw StateDictError(std::string("state value is ") + type_name() + ", not " +
                         type_name_of<T>());
  }
  bool is_tensor_like() const { return is<at::Tensor>() || is<DTensor>() || is<ShardedTensor>(); }

  const Variant& variant() const { return v_; }
  Variant& variant() { return v_; }

  // "Tensor", "DTensor", "int", ...
  const char* type_name() const;
  // One line: "Tensor[7, 5] Float cpu", "DTensor[8, 4] Float [Shard(0)] local [2, 4]", "10",
  // "'adam'", "list(3)", "dict(2)".
  std::string summary() const;

 private:
  template <typename T>
  static const char* type_name_of() {
    if constexpr (std::is_same_v<T, StateNone>) return "none";
    else if constexpr (std::is_same_v<T, bool>) return "bool";
    else if constexpr (std::is_same_v<T, std::int64_t>) return "int";
    else if constexpr (std::is_same_v<T, double>) return "float";
    else if constexpr (std::is_same_v<T, std::string>) return "string";
    else if constexpr (std::is_same_v<T, at::Tensor>) return "Tensor";
    else if constexpr (std::is_same_v<T, DTensor>) return "DTensor";
    else if constexpr (std::is_same_v<T, ShardedTensor>) return "ShardedTensor";
    else if constexpr (std::is_same_v<T, StateList>) return "list";
    else return "dict";
  }
  Variant v_;
};

}  // namespace c10dtest
