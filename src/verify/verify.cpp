// The state-dict verifier. Each rank's distributed dict is described as a list of leaves (path,
// type, global shape, dtype, layout, this rank's pieces with their offsets). check_rank() turns
// one rank's leaves and the reference into findings, asking for the value comparisons it needs;
// where those run is the only difference between the strategies: on the owning rank
// (shard-local) or on the rank holding the reference after a gather. Findings of every rank are
// then exchanged and merged into one report, the same on every rank.
#include "c10dtest/verify.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "../sharding/bytes.hpp"
#include "c10dtest/control_plane.hpp"
#include "c10dtest/error.hpp"
#include "c10dtest/world.hpp"
#include "common/fields.hpp"
#include "common/text.hpp"
#include "exchange.hpp"
#include "scan.hpp"

namespace c10dtest {

const char* to_string(VerifyStrategy strategy) {
  switch (strategy) {
    case VerifyStrategy::kShardLocal: return "shard-local";
    case VerifyStrategy::kGather: return "gather";
    default: return "auto";
  }
}

VerifyStrategy parse_verify_strategy(const std::string& name) {
  if (name == "auto") return VerifyStrategy::kAuto;
  if (name == "shard-local") return VerifyStrategy::kShardLocal;
  if (name == "gather") return VerifyStrategy::kGather;
  throw ConfigError("'" + name + "' is not a verify strategy (auto, shard-local or gather)");
}

std::vector<std::string> detail::exchange_text(const std::string& what, const std::string& value) {
  if (!World::initialized() || World::instance().world_size() == 1) return {value};
  World& w = World::instance();
  return w.control().all_gather(w.next_tag(what), value,
                                w.options().effective_collective_timeout());
}

namespace {

using detail::MismatchStats;
using detail::put_field;
using detail::shape_text;

// ---------------------------------------------------------------------------------------------
// Leaves of the distributed dict.

struct Piece {
  std::vector<std::int64_t> offsets;
  std::vector<std::int64_t> sizes;
  at::Tensor tensor;  // only on the owning rank
};

struct LeafInfo {
  std::string path;
  std::string type;  // StateValue::type_name(), "list" for a list of plain values
  bool tensor = false;
  std::vector<std::int64_t> shape;
  int dtype = 0;
  c10::Device device = c10::kCPU;
  // "[Shard(0)]", "3 shards", "" for a plain tensor: see layout_of(). Written from `source` only
  // when needed (a report or a gather): most keys never need it.
  std::string layout;
  const StateValue* source = nullptr;  // on the describing rank only
  std::string problem;  // a layout fault found by the owner (shards that do not tile, ...)
  std::string scalar;   // canonical text of a plain value
  std::vector<std::string> elements;  // of a list of plain values: each element's text
  std::vector<Piece> pieces;
};

std::string double_text(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

bool is_plain(const StateValue& v) {
  return !v.is_tensor_like() && !v.is<StateList>() && !v.is<StateDict>();
}

// Canonical text of a plain value (or a list of them): equal texts mean equal values.
std::string plain_text(const StateValue& v) {
  if (v.is<StateNone>()) return "None";
  if (v.is<bool>()) return v.as<bool>() ? "True" : "False";
  if (v.is<std::int64_t>()) return std::to_string(v.as<std::int64_t>());
  if (v.is<double>()) return double_text(v.as<double>());
  if (v.is<std::string>()) return "'" + v.as<std::string>() + "'";
  std::string out = "[";
  const auto& l = v.as<StateList>();
  for (std::size_t i = 0; i < l.size(); ++i) out += (i ? ", " : "") + plain_text(l[i]);
  return out + "]";
}

bool plain_list(const StateValue& v) {
  if (!v.is<StateList>()) return false;
  for (const auto& e : v.as<StateList>()) {
    if (!is_plain(e)) return false;
  }
  return true;
}

void walk(const StateValue& v, const std::string& path,
          std::vector<std::pair<std::string, const StateValue*>>* out) {
  if (v.is<StateDict>() && !v.as<StateDict>().empty()) {
    const auto& d = v.as<StateDict>();
    for (std::size_t i = 0; i < d.size(); ++i) {
      walk(d.value(i), path.empty() ? d.keys()[i] : path + "." + d.keys()[i], out);
    }
  } else if (v.is<StateList>() && !plain_list(v)) {
    const auto& l = v.as<StateList>();
    for (std::size_t i = 0; i < l.size(); ++i) walk(l[i], path + "." + std::to_string(i), out);
  } else {
    out->push_back({path, &v});
  }
}

std::vector<std::pair<std::string, const StateValue*>> flatten(const StateDict& sd) {
  std::vector<std::pair<std::string, const StateValue*>> out;
  for (std::size_t i = 0; i < sd.size(); ++i) walk(sd.value(i), sd.keys()[i], &out);
  return out;
}

std::vector<std::int64_t> zeros_like_shape(at::IntArrayRef shape) {
  return std::vector<std::int64_t>(shape.size(), 0);
}

// The layout text of a leaf described here or received from another rank.
std::string layout_of(const LeafInfo& leaf) {
  if (leaf.source == nullptr || !leaf.layout.empty()) return leaf.layout;
  if (leaf.source->is<DTensor>()) return to_string(leaf.source->as<DTensor>().placements());
  if (leaf.source->is<ShardedTensor>()) {
    return std::to_string(leaf.source->as<ShardedTensor>().metadata().shards.size()) + " shards";
  }
  return "";
}

LeafInfo describe_leaf(const std::string& path, const StateValue& v, int world_rank) {
  LeafInfo leaf;
  leaf.path = path;
  leaf.source = &v;
  leaf.type = v.type_name();
  if (v.is<at::Tensor>()) {
    const at::Tensor& t = v.as<at::Tensor>();
    leaf.tensor = true;
    if (!t.defined()) {
      leaf.problem = "holds an undefined tensor";
      return leaf;
    }
    leaf.shape = t.sizes().vec();
    leaf.dtype = static_cast<int>(t.scalar_type());
    leaf.device = t.device();
    leaf.pieces.push_back({zeros_like_shape(t.sizes()), t.sizes().vec(), t});
  } else if (v.is<DTensor>()) {
    const DTensor& d = v.as<DTensor>();
    leaf.tensor = true;
    leaf.shape = d.global_shape();
    leaf.dtype = static_cast<int>(d.dtype());
    leaf.device = d.local().device();
    for (const auto& p : d.placements()) {
      if (std::holds_alternative<Partial>(p)) {
        leaf.problem = "holds a Partial placement: verify its full_tensor() instead";
        return leaf;
      }
    }
    const auto& ranks = d.mesh()->ranks();
    if (std::find(ranks.begin(), ranks.end(), world_rank) != ranks.end()) {
      Piece piece;
      detail::local_extent(d.global_shape(), d.placements(), *d.mesh(),
                           d.mesh()->coordinate_of(world_rank), &piece.sizes, &piece.offsets);
      piece.tensor = d.local();
      leaf.pieces.push_back(std::move(piece));
    }
  } else if (v.is<ShardedTensor>()) {
    const ShardedTensor& s = v.as<ShardedTensor>();
    leaf.tensor = true;
    leaf.shape = s.metadata().global_shape;
    leaf.dtype = static_cast<int>(s.metadata().dtype);
    try {
      validate_tiling(s.metadata(), s.process_group() ? s.process_group()->getSize() : 1);
    } catch (const ShardingError& e) {
      leaf.problem = std::string("shards do not tile the tensor: ") + e.what();
    }
    for (const auto& shard : s.local_shards()) {
      if (leaf.pieces.empty()) leaf.device = shard.tensor.device();
      leaf.pieces.push_back({shard.metadata.offsets, shard.metadata.sizes, shard.tensor});
    }
  } else {
    leaf.scalar = v.is<StateDict>() ? "{}" : plain_text(v);
    if (v.is<StateList>()) {
      leaf.type = "list";
      for (const auto& e : v.as<StateList>()) leaf.elements.push_back(plain_text(e));
    }
  }
  return leaf;
}

std::vector<LeafInfo> describe_dict(const StateDict& sd, int world_rank) {
  const auto flat = flatten(sd);
  std::vector<LeafInfo> out;
  out.reserve(flat.size());
  for (const auto& [path, v] : flat) out.push_back(describe_leaf(path, *v, world_rank));
  return out;
}

void put_ints(std::string& out, const std::vector<std::int64_t>& v) {
  put_field(out, std::to_string(v.size()));
  for (auto x : v) put_field(out, std::to_string(x));
}

std::vector<std::int64_t> read_ints(detail::FieldReader& r) {
  const auto n = r.number();
  std::vector<std::int64_t> v;
  for (long long i = 0; i < n; ++i) v.push_back(r.number());
  return v;
}

std::string encode_leaves(const std::vector<LeafInfo>& leaves) {
  std::string out;
  put_field(out, std::to_string(leaves.size()));
  for (const auto& l : leaves) {
    put_field(out, l.path);
    put_field(out, l.type);
    put_field(out, l.tensor ? "1" : "0");
    put_ints(out, l.shape);
    put_field(out, std::to_string(l.dtype));
    put_field(out, l.device.str());
    put_field(out, layout_of(l));
    put_field(out, l.problem);
    put_field(out, l.scalar);
    put_field(out, std::to_string(l.elements.size()));
    for (const auto& e : l.elements) put_field(out, e);
    put_field(out, std::to_string(l.pieces.size()));
    for (const auto& p : l.pieces) {
      put_ints(out, p.offsets);
      put_ints(out, p.sizes);
    }
  }
  return out;
}

std::vector<LeafInfo> decode_leaves(const std::string& data) {
  detail::FieldReader r(data, "state-dict description");
  std::vector<LeafInfo> leaves(static_cast<std::size_t>(r.number()));
  for (auto& l : leaves) {
    l.path = r.next();
    l.type = r.next();
    l.tensor = r.next() == "1";
    l.shape = read_ints(r);
    l.dtype = static_cast<int>(r.number());
    l.device = c10::Device(r.next());
    l.layout = r.next();
    l.problem = r.next();
    l.scalar = r.next();
    l.elements.resize(static_cast<std::size_t>(r.number()));
    for (auto& e : l.elements) e = r.next();
    l.pieces.resize(static_cast<std::size_t>(r.number()));
    for (auto& p : l.pieces) {
      p.offsets = read_ints(r);
      p.sizes = read_ints(r);
    }
  }
  return leaves;
}

// ---------------------------------------------------------------------------------------------
// Findings.

enum class Kind { kMissing = 0, kUnexpected = 1, kProblem = 2, kValues = 3 };

struct Finding {
  std::string path;
  Kind kind = Kind::kProblem;
  std::string text;  // kProblem: the message after the key; kValues: the key's description
  MismatchStats stats;
  std::vector<std::int64_t> first_offsets;  // the piece holding stats.first
  std::vector<std::int64_t> first_sizes;
  bool whole = true;  // that piece is the whole tensor
};

Finding finding(const std::string& path, Kind kind, std::string text = "") {
  Finding f;
  f.path = path;
  f.kind = kind;
  f.text = std::move(text);
  return f;
}

std::string hex_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%a", v);
  return buf;
}

void put_element(std::string& out, const detail::ElementAt& e) {
  put_ints(out, e.index);
  put_field(out, e.expected);
  put_field(out, e.actual);
}

detail::ElementAt read_element(detail::FieldReader& r) {
  detail::ElementAt e;
  e.index = read_ints(r);
  e.expected = r.next();
  e.actual = r.next();
  return e;
}

std::string encode_findings(const std::vector<Finding>& findings, std::int64_t reference_keys) {
  std::string out;
  put_field(out, std::to_string(reference_keys));
  put_field(out, std::to_string(findings.size()));
  for (const auto& f : findings) {
    put_field(out, f.path);
    put_field(out, std::to_string(static_cast<int>(f.kind)));
    put_field(out, f.text);
    if (f.kind != Kind::kValues) continue;
    put_field(out, std::to_string(f.stats.checked));
    put_field(out, std::to_string(f.stats.bad));
    put_element(out, f.stats.first);
    put_element(out, f.stats.worst);
    put_field(out, hex_double(f.stats.worst_abs));
    put_field(out, std::to_string(f.stats.worst_class));
    put_field(out, hex_double(f.stats.max_rel));
    put_ints(out, f.first_offsets);
    put_ints(out, f.first_sizes);
    put_field(out, f.whole ? "1" : "0");
  }
  return out;
}

std::vector<Finding> decode_findings(const std::string& data, std::int64_t* reference_keys) {
  detail::FieldReader r(data, "verification findings");
  *reference_keys = r.number();
  std::vector<Finding> out(static_cast<std::size_t>(r.number()));
  for (auto& f : out) {
    f.path = r.next();
    f.kind = static_cast<Kind>(r.number());
    f.text = r.next();
    if (f.kind != Kind::kValues) continue;
    f.stats.checked = r.number();
    f.stats.bad = r.number();
    f.stats.first = read_element(r);
    f.stats.worst = read_element(r);
    f.stats.worst_abs = std::strtod(r.next().c_str(), nullptr);
    f.stats.worst_class = static_cast<int>(r.number());
    f.stats.max_rel = std::strtod(r.next().c_str(), nullptr);
    f.first_offsets = read_ints(r);
    f.first_sizes = read_ints(r);
    f.whole = r.next() == "1";
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Checking one rank's leaves against the reference.

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

struct Reference {
  std::vector<std::pair<std::string, const StateValue*>> leaves;
  explicit Reference(const StateDict& sd) : leaves(flatten(sd)) {}
};

// A key whose values check_rank() found comparable.
struct ValueCheck {
  std::size_t before;  // how many of the rank's other findings come before it in the report
  std::size_t leaf;
  detail::ScanTolerance tol;
};

// A value comparison check_rank() asks for: one piece of a check's leaf against the reference.
struct Comparison {
  std::size_t check;  // index into RankCheck::checks (its leaf and tolerance)
  std::size_t piece;
  at::Tensor expected;  // the whole reference tensor (the piece's offsets place the slice)
};

std::string tolerance_text(const detail::ScanTolerance& t);
std::string leaf_text(const LeafInfo& leaf);

// What check_rank() finds for one rank: the findings settled by the descriptions alone, and the
// value comparisons still to run, which compare() runs; finish() gives the rank's
// findings in report order. A key whose values match costs no Finding (most keys, usually).
struct RankCheck {
  std::vector<Finding> findings;
  std::vector<ValueCheck> checks;
  std::vector<Comparison> comparisons;

  const ValueCheck& of(const Comparison& c) const { return checks[c.check]; }

  // Compares the piece of `c` (`actual`: this rank's, or received from its owner) and keeps
  // what differs.
  void compare(const Comparison& c, const std::vector<LeafInfo>& leaves,
               const at::Tensor& actual) {
    const LeafInfo& leaf = leaves[of(c).leaf];
    const Piece& p = leaf.pieces[c.piece];
    const MismatchStats s = detail::scan_piece(c.expected, actual, of(c).tol, p.offsets);
    if (s.bad == 0) return;
    Finding& f = failing[c.check];
    if (f.stats.merge(s)) {
      f.first_offsets = p.offsets;
      f.first_sizes = p.sizes;
      f.whole = p.sizes == leaf.shape;
    }
  }

  std::vector<Finding> finish(const std::vector<LeafInfo>& leaves) {
    std::vector<Finding> out;
    out.reserve(findings.size() + failing.size());
    auto next = failing.begin();
    for (std::size_t i = 0; i <= findings.size(); ++i) {
      for (; next != failing.end() && checks[next->first].before == i; ++next) {
        const ValueCheck& check = checks[next->first];
        const LeafInfo& leaf = leaves[check.leaf];
        Finding& f = next->second;
        f.path = leaf.path;
        f.kind = Kind::kValues;
        f.text = leaf_text(leaf) + "; " + tolerance_text(check.tol);
        // Every piece was compared, the matching ones too.
        f.stats.checked = 0;
        for (const auto& p : leaf.pieces) {
          std::int64_t n = 1;
          for (auto d : p.sizes) n *= d;
          f.stats.checked += n;
        }
        out.push_back(std::move(f));
      }
      if (i < findings.size()) out.push_back(std::move(findings[i]));
    }
    return out;
  }

 private:
  std::map<std::size_t, Finding> failing;  // by check
};

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

// "DTensor [7, 5] Float [Shard(0)]".
std::string leaf_text(const LeafInfo& leaf) {
  return leaf.type + " " + shape_text(leaf.shape) + " " +
         c10::toString(static_cast<at::ScalarType>(leaf.dtype)) +
         [&] {
           const std::string layout = layout_of(leaf);
           return layout.empty() ? layout : " " + layout;
         }();
}

// Checks one rank's leaves (`leaves`, from that rank) against the reference: findings in
// reference order, then unexpected keys in the rank's order, with the value comparisons to run.
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

// ---------------------------------------------------------------------------------------------
// The merged report.

std::string ranks_text(const std::vector<int>& ranks, int world_size) {
  if (world_size > 1 && static_cast<int>(ranks.size()) == world_size) return "every rank";
  return detail::rank_list(ranks);
}

struct Merged {
  Finding finding;
  std::vector<int> ranks;     // ranks reporting it (with mismatches, for values)
  int first_rank = -1;
};

::testing::AssertionResult report(const std::vector<std::vector<Finding>>& by_rank,
                                  std::int64_t reference_keys, const VerifyOptions& options) {
  const int world = static_cast<int>(by_rank.size());
  std::vector<Merged> merged;
  std::map<std::string, std::size_t> where;  // kind|path|text -> index (values: kind|path)
  for (int r = 0; r < world; ++r) {
    for (const auto& f : by_rank[static_cast<std::size_t>(r)]) {
      const std::string id = std::to_string(static_cast<int>(f.kind)) + "|" + f.path +
                             (f.kind == Kind::kValues ? std::string() : "|" + f.text);
      auto it = where.find(id);
      if (it == where.end()) {
        where[id] = merged.size();
        merged.push_back({f, {r}, r});
        continue;
      }
      Merged& m = merged[it->second];
      m.ranks.push_back(r);
      if (f.kind == Kind::kValues && m.finding.stats.merge(f.stats)) {
        m.first_rank = r;
        m.finding.first_offsets = f.first_offsets;
        m.finding.first_sizes = f.first_sizes;
        m.finding.whole = f.whole;
      }
    }
  }
  if (merged.empty()) return ::testing::AssertionSuccess();

  std::vector<const Merged*> missing;
  std::vector<const Merged*> unexpected;
  std::vector<const Merged*> other;
  std::set<std::string> keys;  // reference keys that differ
  for (const auto& m : merged) {
    if (m.finding.kind != Kind::kUnexpected) keys.insert(m.finding.path);
    if (m.finding.kind == Kind::kMissing) missing.push_back(&m);
    else if (m.finding.kind == Kind::kUnexpected) unexpected.push_back(&m);
    else other.push_back(&m);
  }
  std::ostringstream os;
  os << "state dict does not match the reference: " << keys.size() << " of " << reference_keys
     << " keys differ";
  if (!missing.empty()) os << " (" << missing.size() << " missing)";
  if (!unexpected.empty()) os << ", " << unexpected.size() << " unexpected";
  constexpr std::size_t kNames = 20;
  auto list = [&](const char* title, const std::vector<const Merged*>& items) {
    if (items.empty()) return;
    os << "\n  " << title << ": ";
    for (std::size_t i = 0; i < items.size() && i < kNames; ++i) {
      os << (i ? ", " : "") << "'" << items[i]->finding.path << "'";
      if (static_cast<int>(items[i]->ranks.size()) != world || world == 1) {
        if (world > 1) os << " (" << ranks_text(items[i]->ranks, world) << ")";
      }
    }
    if (items.size() > kNames) os << ", ... and " << items.size() - kNames << " more";
  };
  list("missing key(s)", missing);
  list("unexpected key(s)", unexpected);
  std::size_t shown = 0;
  std::vector<std::string> rest;
  for (const Merged* m : other) {
    if (shown >= options.max_reported_keys) {
      rest.push_back(m->finding.path);
      continue;
    }
    ++shown;
    const Finding& f = m->finding;
    os << "\n  '" << f.path << "'";
    if (f.kind == Kind::kProblem) {
      os << (f.text.rfind("(", 0) == 0 ? " " : ": ") << f.text;
      if (world > 1) os << " [" << ranks_text(m->ranks, world) << "]";
      continue;
    }
    const auto semi = f.text.find("; ");
    os << " (" << f.text.substr(0, semi) << ")";
    if (world > 1 || !f.whole) {
      os << " on " << ranks_text(m->ranks, world);
      if (!f.whole) {
        os << " (" << (m->ranks.size() > 1 ? "first in the shard of rank " +
                                                   std::to_string(m->first_rank) + " at"
                                             : std::string("shard at"))
           << " offsets " << shape_text(f.first_offsets) << ", sizes "
           << shape_text(f.first_sizes) << ")";
      }
    }
    os << ": " << detail::describe(f.stats) << "; " << f.text.substr(semi + 2);
  }
  if (!rest.empty()) {
    os << "\n  ... and " << rest.size() << " more key" << (rest.size() == 1 ? "" : "s")
       << " differ: ";
    for (std::size_t i = 0; i < rest.size() && i < kNames; ++i) {
      os << (i ? ", " : "") << "'" << rest[i] << "'";
    }
    if (rest.size() > kNames) os << ", ...";
  }
  return ::testing::AssertionFailure() << os.str();
}

// ---------------------------------------------------------------------------------------------
// Strategies.

VerifyStrategy effective_strategy(const VerifyOptions& options) {
  if (options.strategy != VerifyStrategy::kAuto || !World::initialized()) return options.strategy;
  return parse_verify_strategy(World::instance().options().verify_strategy);
}

std::vector<Finding> shard_local(int rank, const std::vector<LeafInfo>& leaves,
                                 const Reference& ref, const VerifyOptions& options) {
  RankCheck check = check_rank(rank, leaves, ref, options);
  for (const auto& c : check.comparisons) {
    check.compare(c, leaves, leaves[check.of(c).leaf].pieces[c.piece].tensor);
  }
  return check.finish(leaves);
}

// Gather: every rank's pieces go to `root` in batches of about options.gather_batch_bytes per
// rank; the root checks each rank's leaves as that rank would have. Returns the findings by rank
// on the root, nothing elsewhere.
std::vector<std::vector<Finding>> gather_and_check(const std::vector<LeafInfo>& mine,
                                                   const Reference& ref,
                                                   const VerifyOptions& options, int root) {
  World& world = World::instance();
  const int rank = world.rank();
  const int size = world.world_size();
  const std::vector<std::string> described =
      detail::exchange_text("verify-leaves", encode_leaves(mine));
  std::vector<std::vector<LeafInfo>> leaves(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) {
    leaves[static_cast<std::size_t>(r)] =
        r == rank ? mine : decode_leaves(described[static_cast<std::size_t>(r)]);
  }
  // Batches: consecutive pieces of a rank, each batch at most gather_batch_bytes (a bigger piece
  // goes alone).
  struct Slot {
    std::size_t leaf;
    std::size_t piece;
    std::int64_t bytes;
  };
  std::vector<std::vector<std::vector<Slot>>> batches(static_cast<std::size_t>(size));
  std::size_t rounds = 0;
  for (int r = 0; r < size; ++r) {
    auto& mine_batches = batches[static_cast<std::size_t>(r)];
    std::int64_t used = 0;
    const auto& ls = leaves[static_cast<std::size_t>(r)];
    for (std::size_t li = 0; li < ls.size(); ++li) {
      for (std::size_t pi = 0; pi < ls[li].pieces.size(); ++pi) {
        std::int64_t n = static_cast<std::int64_t>(
            c10::elementSize(static_cast<at::ScalarType>(ls[li].dtype)));
        for (auto s : ls[li].pieces[pi].sizes) n *= s;
        if (mine_batches.empty() || used + n > options.gather_batch_bytes) {
          if (mine_batches.empty() || used > 0) mine_batches.emplace_back();
          used = 0;
        }
        mine_batches.back().push_back({li, pi, n});
        used += n;
      }
    }
    rounds = std::max(rounds, mine_batches.size());
  }

  std::vector<RankCheck> checks;
  if (rank == root) {
    for (int r = 0; r < size; ++r) {
      checks.push_back(check_rank(r, leaves[static_cast<std::size_t>(r)], ref, options));
    }
  }
  // On the root: for each rank, (leaf, piece) -> comparison index.
  std::vector<std::map<std::pair<std::size_t, std::size_t>, std::size_t>> wanted(
      static_cast<std::size_t>(size));
  for (int r = 0; r < size && rank == root; ++r) {
    const auto& cs = checks[static_cast<std::size_t>(r)].comparisons;
    for (std::size_t i = 0; i < cs.size(); ++i) {
      wanted[static_cast<std::size_t>(r)][{checks[static_cast<std::size_t>(r)].of(cs[i]).leaf,
                                           cs[i].piece}] = i;
    }
  }
  const ProcessGroupPtr pg = world.process_group();
  for (std::size_t b = 0; b < rounds; ++b) {
    std::vector<std::int64_t> sizes;
    for (int r = 0; r < size; ++r) {
      std::int64_t n = 0;
      const auto& rb = batches[static_cast<std::size_t>(r)];
      if (b < rb.size()) {
        for (const auto& s : rb[b]) n += s.bytes;
      }
      sizes.push_back(n);
    }
    // This rank's batch, packed into one buffer of the padded length (no second copy).
    const std::int64_t longest = std::max<std::int64_t>(1, *std::max_element(sizes.begin(), sizes.end()));
    at::Tensor send = at::empty({longest}, at::kByte);
    const auto& my_batches = batches[static_cast<std::size_t>(rank)];
    if (b < my_batches.size()) {
      std::int64_t at_byte = 0;
      for (const auto& s : my_batches[b]) {
        if (s.bytes > 0) {
          const at::Tensor t = mine[s.leaf].pieces[s.piece].tensor;
          send.narrow(0, at_byte, s.bytes).copy_(detail::as_bytes(t.detach().cpu()));
        }
        at_byte += s.bytes;
      }
    }
    // Compared on CPU: one copy per round when the group exchanges on a GPU (NCCL).
    std::vector<at::Tensor> got = detail::gather_bytes(pg, send, sizes, root);
    for (auto& g : got) g = g.cpu();
    if (rank != root) continue;
    for (int r = 0; r < size; ++r) {
      const auto& rb = batches[static_cast<std::size_t>(r)];
      if (b >= rb.size()) continue;
      std::int64_t at_byte = 0;
      for (const auto& s : rb[b]) {
        const auto& w = wanted[static_cast<std::size_t>(r)];
        const auto it = w.find({s.leaf, s.piece});
        if (it != w.end()) {
          const LeafInfo& leaf = leaves[static_cast<std::size_t>(r)][s.leaf];
          const Piece& p = leaf.pieces[s.piece];
          RankCheck& check = checks[static_cast<std::size_t>(r)];
          const Comparison& c = check.comparisons[it->second];
          const at::Tensor actual =
              detail::from_bytes(got[static_cast<std::size_t>(r)].narrow(0, at_byte, s.bytes),
                                 static_cast<at::ScalarType>(leaf.dtype), p.sizes);
          check.compare(c, leaves[static_cast<std::size_t>(r)], actual);
        }
        at_byte += s.bytes;
      }
    }
  }
  std::vector<std::vector<Finding>> findings;
  for (std::size_t r = 0; r < checks.size(); ++r) findings.push_back(checks[r].finish(leaves[r]));
  return findings;
}

}  // namespace

::testing::AssertionResult verify_state_dict(const StateDict& reference, const StateDict& dist,
                                             const VerifyOptions& options) {
  const bool distributed = World::initialized() && World::instance().world_size() > 1;
  const int rank = distributed ? World::instance().rank() : 0;
  const int size = distributed ? World::instance().world_size() : 1;
  const std::vector<LeafInfo> mine = describe_dict(dist, rank);
  const Reference ref(reference);
  const auto reference_keys = static_cast<std::int64_t>(ref.leaves.size());
  if (!distributed) {
    return report({shard_local(rank, mine, ref, options)}, reference_keys, options);
  }
  const VerifyStrategy asked = effective_strategy(options);
  // One exchange settles the common case: every rank holds a reference and sends its shard-local
  // findings with the flag ("1" + findings; "0" from a rank without a reference, or when the
  // gather strategy is asked for).
  const bool try_local = asked != VerifyStrategy::kGather && !reference.empty();
  const std::vector<std::string> first = detail::exchange_text(
      "verify",
      try_local ? "1" + encode_findings(shard_local(rank, mine, ref, options), reference_keys)
                : std::string(reference.empty() ? "0" : "h"));
  std::vector<int> without;
  int root = -1;
  for (int r = 0; r < size; ++r) {
    const char flag = first[static_cast<std::size_t>(r)].empty() ? '0'
                                                                  : first[static_cast<std::size_t>(r)][0];
    if (flag == '0') {
      without.push_back(r);
    } else if (root < 0) {
      root = r;
    }
  }
  const bool all_local = std::all_of(first.begin(), first.end(), [](const std::string& p) {
    return !p.empty() && p[0] == '1';
  });
  if (asked == VerifyStrategy::kShardLocal && !without.empty()) {
    return ::testing::AssertionFailure()
           << "shard-local verification needs the reference on every rank; "
           << ranks_text(without, size) << " passed an empty reference (use the gather strategy)";
  }
  std::vector<std::string> payloads;
  std::int64_t keys = reference_keys;
  if (all_local) {
    for (const auto& p : first) payloads.push_back(p.substr(1));
  } else {
    if (root < 0) root = 0;
    const auto by_rank = gather_and_check(mine, ref, options, root);
    std::string mine_payload;
    if (rank == root) {
      put_field(mine_payload, std::to_string(size));
      for (const auto& f : by_rank) put_field(mine_payload, encode_findings(f, reference_keys));
    }
    const auto all = detail::exchange_text("verify-findings", mine_payload);
    detail::FieldReader r(all[static_cast<std::size_t>(root)], "verification findings");
    const auto n = r.number();
    for (long long i = 0; i < n; ++i) payloads.push_back(r.next());
  }
  std::vector<std::vector<Finding>> by_rank;
  for (const auto& p : payloads) {
    std::int64_t k = 0;
    by_rank.push_back(decode_findings(p, &k));
    keys = std::max(keys, k);
  }
  return report(by_rank, keys, options);
}

::testing::AssertionResult verify_tensor(const at::Tensor& reference, const StateValue& dist,
                                         const VerifyOptions& options, const std::string& key) {
  StateDict r;
  if (reference.defined()) r.insert(key, reference);
  StateDict d;
  d.insert(key, dist);
  return verify_state_dict(r, d, options);
}

void PrintTo(const StateDict& sd, std::ostream* os) { *os << "{" << sd.describe(20) << "}"; }
void PrintTo(const StateValue& v, std::ostream* os) { *os << v.summary(); }

}  // namespace c10dtest
