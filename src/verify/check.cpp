#include "check.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
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

namespace {

// A plain number from its canonical text (plain_text: "True", "3", "0.25", "inf", "nan").
struct Number {
  bool is_bool = false;
  bool integral = false;  // written without a fraction or exponent (1.0 is written "1")
  long double value = 0;  // exact for every int64 and double (x86's 64-bit mantissa)
};

// `type`: the value's type name when known ("float" or "int"), else the text decides.
std::optional<Number> parse_number(const std::string& text, const std::string& type = "") {
  Number n;
  if (text == "True" || text == "False") {
    n.is_bool = true;
    n.integral = true;
    n.value = text == "True" ? 1 : 0;
    return n;
  }
  if (text.empty() || text[0] == '\'' || text == "None" || text[0] == '[' || text[0] == '{') {
    return std::nullopt;
  }
  char* end = nullptr;
  n.value = std::strtold(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0') return std::nullopt;
  n.integral = type == "int" ||
               (type != "float" && text.find_first_of(".eEn") == std::string::npos);
  return n;
}

// Whether plain numbers match. By default as exact values: an int and a float of the same value
// match (1 and 1.0, as in Python), NaN matches NaN, a bool matches only a bool. With
// `python_numbers`, as PyTorch's TestCase.assertEqual(reference, dist) in _verify_msd and
// _verify_osd: a bool against a number compares truth values; unless both are integers, the
// difference may be up to 1e-5 + 1.3e-6 * |dist| (a Python float is compared as the default
// dtype, float32, with assert_close's tolerances for it); NaN matches NaN.
bool numbers_match(const Number& dist, const Number& expected, bool python_numbers) {
  const bool dist_nan = std::isnan(dist.value);
  const bool expected_nan = std::isnan(expected.value);
  // A bool against anything: PyTorch compares truth values (True matches 3 and NaN).
  if (python_numbers && (dist.is_bool || expected.is_bool)) {
    return (dist.value != 0) == (expected.value != 0);
  }
  if (dist_nan || expected_nan) return dist_nan && expected_nan;
  if (!python_numbers) return dist.is_bool == expected.is_bool && dist.value == expected.value;
  if (dist.value == expected.value) return true;
  if (dist.integral && expected.integral) return false;
  // A Python float is compared as the default dtype (float32): assert_close's float32 tolerances.
  const long double diff = std::fabs(dist.value - expected.value);
  return std::isfinite(static_cast<double>(diff)) &&
         diff <= 1e-5L + 1.3e-6L * std::fabs(dist.value);
}

// Whether a plain value (or a list of plain values) of the reference matches the leaf's.
bool plain_values_match(const StateValue& expected, const LeafInfo& leaf, bool python_numbers) {
  auto one = [&](const StateValue& e, const std::string& d, const std::string& d_type) {
    const std::string e_text = plain_text(e);
    if (e_text == d && e.type_name() == d_type) return true;
    const auto en = parse_number(e_text, e.type_name());
    const auto dn = parse_number(d, d_type);
    return en && dn && numbers_match(*dn, *en, python_numbers);
  };
  if (expected.is<StateList>()) {
    const auto& l = expected.as<StateList>();
    if (leaf.type != "list" || l.size() != leaf.elements.size()) return false;
    for (std::size_t i = 0; i < l.size(); ++i) {
      // The type of a received list's elements is not known: their texts tell.
      if (!one(l[i], leaf.elements[i], "")) return false;
    }
    return true;
  }
  if (leaf.type == "list" || expected.is<StateDict>()) return false;
  return one(expected, leaf.scalar, leaf.type);
}

// Whether two shapes broadcast together (numpy's rule).
bool broadcastable(const std::vector<std::int64_t>& a, at::IntArrayRef b) {
  for (std::size_t i = 1; i <= std::min(a.size(), b.size()); ++i) {
    const std::int64_t x = a[a.size() - i];
    const std::int64_t y = b[b.size() - i];
    if (x != y && x != 1 && y != 1) return false;
  }
  return true;
}

}  // namespace

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
      if (expected_text == leaf.scalar || plain_values_match(ev, leaf, options.python_numbers)) {
        continue;
      }
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
      // PyTorch's _compare_tensor (torch.allclose) broadcasts; loading a state dict does not.
      problem(path, "(" + describe() + ") shape " + shape_text(leaf.shape) + " vs expected " +
                        shape_text(expected.sizes()) +
                        (broadcastable(leaf.shape, expected.sizes())
                             ? " (broadcastable, which torch.allclose would accept; a state dict "
                               "must match exactly)"
                             : ""));
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
    const auto defaults = default_tolerances(expected.scalar_type(), options.compare.rule);
    detail::ScanTolerance tol{options.compare.rtol.value_or(defaults.first),
                              options.compare.atol.value_or(defaults.second),
                              options.compare.equal_nan,
                              options.compare.rule == CloseRule::kTorchAllclose};
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
