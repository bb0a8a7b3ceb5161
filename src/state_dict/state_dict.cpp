#include "common/text.hpp"
#include "c10dtest/state_dict.hpp"

#include <sstream>

namespace c10dtest {

namespace {


void describe_into(std::ostringstream& os, const StateDict& sd, std::size_t limit, int depth) {
  const std::string pad(static_cast<std::size_t>(depth) * 2, ' ');
  for (std::size_t i = 0; i < sd.size() && i < limit; ++i) {
    const StateValue& v = sd.value(i);
    os << pad << sd.keys()[i] << ": " << v.summary() << '\n';
    if (v.is<StateDict>()) describe_into(os, v.as<StateDict>(), limit, depth + 1);
  }
  if (sd.size() > limit) os << pad << "... " << (sd.size() - limit) << " more entries\n";
}

}  // namespace

StateDict::StateDict() = default;
StateDict::StateDict(const StateDict&) = default;
StateDict::StateDict(StateDict&&) noexcept = default;
StateDict& StateDict::operator=(const StateDict&) = default;
StateDict& StateDict::operator=(StateDict&&) noexcept = default;
StateDict::~StateDict() = default;

const StateValue& StateDict::at(const std::string& key) const {
  const auto it = index_.find(key);
  if (it == index_.end()) {
    std::ostringstream os;
    os << "no key '" << key << "' in a state dict of " << size() << " entries";
    if (!empty()) {
      os << " (";
      for (std::size_t i = 0; i < size() && i < 5; ++i) os << (i ? ", " : "") << keys_[i];
      os << (size() > 5 ? ", ...)" : ")");
    }
    throw StateDictError(os.str());
  }
  return values_[it->second];
}

StateValue& StateDict::at(const std::string& key) {
  return const_cast<StateValue&>(static_cast<const StateDict&>(*this).at(key));
}

const StateValue& StateDict::value(std::size_t i) const { return values_.at(i); }
StateValue& StateDict::value(std::size_t i) { return values_.at(i); }

void StateDict::insert(const std::string& key, StateValue value) {
  const auto it = index_.find(key);
  if (it != index_.end()) {
    values_[it->second] = std::move(value);
    return;
  }
  index_.emplace(key, keys_.size());
  keys_.push_back(key);
  values_.push_back(std::move(value));
}

void StateDict::rename(const std::string& from, const std::string& to) {
  if (from == to) {
    at(from);
    return;
  }
  if (contains(to)) throw StateDictError("cannot rename '" + from + "' to '" + to + "': it exists");
  at(from);
  const std::size_t i = index_.at(from);
  index_.erase(from);
  index_.emplace(to, i);
  keys_[i] = to;
}

bool StateDict::erase(const std::string& key) {
  const auto it = index_.find(key);
  if (it == index_.end()) return false;
  const std::size_t i = it->second;
  keys_.erase(keys_.begin() + static_cast<std::ptrdiff_t>(i));
  values_.erase(values_.begin() + static_cast<std::ptrdiff_t>(i));
  index_.erase(it);
  for (auto& [k, pos] : index_) {
    if (pos > i) --pos;
  }
  return true;
}

std::string StateDict::describe(std::size_t limit) const {
  std::ostringstream os;
  describe_into(os, *this, limit, 0);
  return os.str();
}

const char* StateValue::type_name() const {
  return std::visit(
      [](const auto& v) { return type_name_of<std::decay_t<decltype(v)>>(); }, v_);
}

std::string StateValue::summary() const {
  std::ostringstream os;
  if (is<StateNone>()) {
    os << "None";
  } else if (is<bool>()) {
    os << (as<bool>() ? "true" : "false");
  } else if (is<std::int64_t>()) {
    os << as<std::int64_t>();
  } else if (is<double>()) {
    os << as<double>();
  } else if (is<std::string>()) {
    os << '\'' << as<std::string>() << '\'';
  } else if (is<at::Tensor>()) {
    const auto& t = as<at::Tensor>();
    if (!t.defined()) {
      os << "Tensor(undefined)";
    } else {
      os << "Tensor" << detail::shape_text(t.sizes()) << ' ' << c10::toString(t.scalar_type()) << ' '
         << t.device();
    }
  } else if (is<DTensor>()) {
    const auto& d = as<DTensor>();
    os << "DTensor" << detail::shape_text(d.global_shape()) << ' ';
    if (d.local().defined()) {
      os << c10::toString(d.dtype()) << ' ' << to_string(d.placements()) << " local "
         << detail::shape_text(d.local().sizes());
    } else {
      os << to_string(d.placements()) << " (no piece on this rank)";
    }
  } else if (is<ShardedTensor>()) {
    const auto& s = as<ShardedTensor>();
    os << "ShardedTensor" << detail::shape_text(s.metadata().global_shape) << ' '
       << c10::toString(s.metadata().dtype) << ' ' << s.metadata().shards.size() << " shards, "
       << s.local_shards().size() << " local";
  } else if (is<StateList>()) {
    os << "list(" << as<StateList>().size() << ")";
  } else {
    os << "dict(" << as<StateDict>().size() << ")";
  }
  return os.str();
}

}  // namespace c10dtest
