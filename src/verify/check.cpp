#include "check.hpp"

#include <algorithm>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "c10dtest/dtensor.hpp"
#include "c10dtest/sharded_tensor.hpp"
#include "common/text.hpp"

namespace c10dtest::detail::verifier {

namespace {

// Finds paths among a list of leaves. Dicts usually list their keys in the same order as the
// reference, so a cursor that expects the next leaf answers most lookups; a hash index is built
// only when that guess fails.
template <typename Leaves>
class PathIndex {
 public:
  explicit PathIndex(const Leaves& leaves) : leaves_(leaves) {}

  // A position of `path` (paths repeat only in odd dicts, such as one holding both "a.b" and
  // "a" -> {"b"}), or npos.
  std::size_t find(const std::string& path) {
    if (index_.empty() && next_ < leaves_.size() && path_of(leaves_[next_]) == path) {
      return next_++;
    }
    if (index_.empty()) {
      index_.reserve(leaves_.size());
      for (std::size_t i = 0; i < leaves_.size(); ++i) index_.emplace(path_of(leaves_[i]), i);
    }
    const auto it = index_.find(path);
    return it == index_.end() ? npos : it->second;
  }

  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

 private:
  static std::string_view path_of(const LeafInfo& l) { return l.path; }
  static std::string_view path_of(const std::pair<std::string, const StateValue*>& l) {
    return l.first;
  }
  const Leaves& leaves_;
  std::size_t next_ = 0;
  std::unordered_map<std::string_view, std::size_t> index_;
};

}  // namespace

std::string tolerance_text(const detail::ScanTolerance& t) {
  std::ostringstream os;
  os.precision(6);
  os << "allowed: atol " << t.atol << " + rtol " << t.rtol << " * |expected|"
     << (t.equal_nan ? ", NaN == NaN" : "");
  return os.str();
}

std::string string_list_diff(const StateList& expected, const std::vector<std::string>& actual) {
  std::multiset<std::string> e;
  const std::multiset<std::string> a(actual.begin(), actual.end());
  for (const auto& v : expected) e.insert(plain_text(v));
  std::vector<std::string> missing;
  std::vector<std::string> extra;
  std::set_difference(e.begin(), e.end(), a.begin(), a.end(), std::back_inserter(missing));
  std::set_difference(a.begin(), a.end(), e.begin(), e.end(), std::back_inserter(extra));
  auto names = [](const std::vector<std::string>& v) {
    std::string s;
    for (std::size_t i = 0; i < v.size() && i < 10; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 10) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  std::string out;
  if (!missing.empty()) out += "lacks " + names(missing);
  if (!extra.empty()) out += std::string(out.empty() ? "" : "; ") + "has extra " + names(extra);
  if (out.empty()) out = "same elements in another order";
  return out;
}

RankCheck check_rank(int rank, const std::vector<LeafInfo>& leaves, const Reference& ref,
                     const VerifyOptions& options) {
  RankCheck result;
  std::vector<Finding>& findings = result.findings;
  if (options.ranks &&
      std::find(options.ranks->begin(), options.ranks->end(), rank) == options.ranks->end()) {
    if (!leaves.empty()) {
      findings.push_back(finding(leaves[0].path, Kind::kProblem,
                                 "is one of " + std::to_string(leaves.size()) +
                                     " keys on a rank whose dict should be empty "
                                     "(VerifyOptions::ranks)"));
    }
    return result;
  }
  result.checks.reserve(ref.leaves.size());
  result.comparisons.reserve(ref.leaves.size());
  PathIndex<std::vector<LeafInfo>> index(leaves);
  std::vector<bool> matched(leaves.size(), false);
  const std::set<std::string> frozen(options.frozen_keys.begin(), options.frozen_keys.end());
  auto problem = [&](const std::string& path, const std::string& text) {
    findings.push_back(finding(path, Kind::kProblem, text));
  };
  for (const auto& [path, expected_value] : ref.leaves) {
    const std::size_t at = index.find(path);
    if (at == PathIndex<std::vector<LeafInfo>>::npos) {
      if (!(options.ignore_frozen_params && frozen.count(path) != 0)) {
        findings.push_back(finding(path, Kind::kMissing));
      }
      continue;
    }
    matched[at] = true;
    const LeafInfo& leaf = leaves[at];
    const StateValue& ev = *expected_value;
    if (ev.is<DTensor>() || ev.is<ShardedTensor>()) {
      problem(path, "the reference holds a " + std::string(ev.type_name()) +
                        "; a reference holds full tensors");
      continue;
    }
    if (ev.is<at::Tensor>() != leaf.tensor) {
      problem(path, "is " + leaf.type + (leaf.tensor ? "" : " " + leaf.scalar) +
                        ", expected " +
                        (ev.is<at::Tensor>() ? std::string("a tensor") : ev.type_name() +
                                                                             (" " + plain_text(ev))));
      continue;
    }
    if (!leaf.tensor) {
      const std::string expected_text = ev.is<StateDict>() ? "{}" : plain_text(ev);
      if (expected_text == leaf.scalar) continue;
      std::string text = leaf.scalar + " vs expected " + expected_text;
      if (ev.is<StateList>() && leaf.type == "list") {
        bool strings = true;
        for (const auto& e : ev.as<StateList>()) strings = strings && e.is<std::string>();
        if (strings) text = string_list_diff(ev.as<StateList>(), leaf.elements);
      }
      problem(path, text);
      continue;
    }
    const at::Tensor& expected = ev.as<at::Tensor>();
    if (!expected.defined()) {
      problem(path, "the reference tensor is undefined");
      continue;
    }
    // A rank outside the DTensor's mesh holds none of it: the mesh's ranks check the value.
    if (!leaf.held) continue;
    auto describe = [&leaf] { return leaf_text(leaf); };
    if (!leaf.problem.empty()) {
      problem(path, "(" + describe() + ") " + leaf.problem);
      continue;
    }
    if (!std::equal(leaf.shape.begin(), leaf.shape.end(), expected.sizes().begin(),
                    expected.sizes().end())) {
      problem(path, "(" + describe() + ") shape " + shape_text(leaf.shape) + " vs expected " +
                        shape_text(expected.sizes()));
      continue;
    }
    const auto dtype = static_cast<at::ScalarType>(leaf.dtype);
    if (options.compare.check_dtype && dtype != expected.scalar_type()) {
      problem(path, "(" + describe() + ") dtype " + c10::toString(dtype) + " vs expected " +
                        c10::toString(expected.scalar_type()));
      continue;
    }
    if (options.check_device && leaf.device != expected.device()) {
      problem(path, "(" + describe() + ") device " + leaf.device.str() + " vs expected " +
                        expected.device().str());
      continue;
    }
    if (leaf.device.type() == c10::DeviceType::Meta || expected.device().type() == c10::DeviceType::Meta) {
      problem(path, "(" + describe() + ") " +
                        (leaf.device.type() == c10::DeviceType::Meta ? "is" : "the reference is") +
                        " on the meta device: it holds no values to compare");
      continue;
    }
    const auto defaults = default_tolerances(expected.scalar_type());
    detail::ScanTolerance tol{options.compare.rtol.value_or(defaults.first),
                              options.compare.atol.value_or(defaults.second),
                              options.compare.equal_nan};
    bool bounds_ok = true;
    for (const auto& p : leaf.pieces) {
      bool in = p.offsets.size() == leaf.shape.size() && p.sizes.size() == leaf.shape.size();
      for (std::size_t d = 0; in && d < leaf.shape.size(); ++d) {
        in = p.offsets[d] >= 0 && p.sizes[d] >= 0 && p.offsets[d] + p.sizes[d] <= leaf.shape[d];
      }
      if (!in) {
        problem(path, "(" + describe() + ") a shard at offsets " + shape_text(p.offsets) +
                          ", sizes " + shape_text(p.sizes) + " lies outside the tensor");
        bounds_ok = false;
        break;
      }
    }
    if (!bounds_ok) continue;
    result.checks.push_back({findings.size(), at, tol});
    for (std::size_t pi = 0; pi < leaf.pieces.size(); ++pi) {
      result.comparisons.push_back({result.checks.size() - 1, pi, expected});
    }
  }
  // A leaf no reference key matched is unexpected, unless its path repeats one that did.
  PathIndex<decltype(ref.leaves)> in_reference(ref.leaves);
  for (std::size_t i = 0; i < leaves.size(); ++i) {
    if (!matched[i] && in_reference.find(leaves[i].path) == PathIndex<decltype(ref.leaves)>::npos) {
      findings.push_back(finding(leaves[i].path, Kind::kUnexpected));
    }
  }
  return result;
}

}  // namespace c10dtest::detail::verifier
