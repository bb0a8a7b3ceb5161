// The state-dict verifier. Each rank's distributed dict is described as a list of leaves (path,
// type, global shape, dtype, layout, this rank's pieces with their offsets). check_rank() turns
// one rank's leaves and the reference into findings, asking for the value comparisons it needs;
// where those run is the only difference between the strategies: on the owning rank
// (shard-local) or on the rank holding the reference after a gather. Findings of every rank are
// then exchanged and merged into one report, the same on every rank.
#include "c10dtest/verify.hpp"

#include <algorithm>
#include <map>
#include <set>

#include "c10dtest/error.hpp"
#include "check.hpp"
#include "comm/bytes.hpp"
#include "common/fields.hpp"
#include "common/text.hpp"
#include "exchange.hpp"
#include "findings.hpp"
#include "leaves.hpp"
#include "report.hpp"

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

std::vector<std::string> detail::exchange_text(Context* context, const std::string& what,
                                               const std::string& value) {
  if (context == nullptr || context->world_size() == 1) return {value};
  return context->all_gather_text(what, value);
}

namespace {

// The context of the first DTensor's mesh in `v`, depth first; nullptr when there is none.
ContextPtr first_mesh_context(const StateValue& v) {
  if (v.is<DTensor>()) return v.as<DTensor>().mesh()->context();
  if (v.is<StateDict>()) {
    const auto& d = v.as<StateDict>();
    for (std::size_t i = 0; i < d.size(); ++i) {
      if (ContextPtr c = first_mesh_context(d.value(i))) return c;
    }
  } else if (v.is<StateList>()) {
    for (const auto& e : v.as<StateList>()) {
      if (ContextPtr c = first_mesh_context(e)) return c;
    }
  }
  return nullptr;
}

}  // namespace

ContextPtr detail::verify_context(const VerifyOptions& options, const StateDict& dist) {
  if (options.context) return options.context;
  for (std::size_t i = 0; i < dist.size(); ++i) {
    if (ContextPtr c = first_mesh_context(dist.value(i))) return c;
  }
  return has_context() ? current_context() : nullptr;
}

namespace {

using detail::put_field;
using detail::shape_text;
using namespace detail::verifier;

// ---------------------------------------------------------------------------------------------
// Strategies.

VerifyStrategy effective_strategy(const VerifyOptions& options, const Context& context) {
  if (options.strategy != VerifyStrategy::kAuto) return options.strategy;
  return parse_verify_strategy(context.verify_strategy());
}

// Compares `actual` for `c`; an exception (a tensor that cannot be read, ...) becomes a finding
// of the key on `rank`, never an exception that leaves the other ranks waiting.
void compare_guarded(RankCheck& check, const Comparison& c, const std::vector<LeafInfo>& leaves,
                     const at::Tensor& actual, int rank) {
  try {
    check.compare(c, leaves, actual);
  } catch (const std::exception& e) {
    const LeafInfo& leaf = leaves[check.of(c).leaf];
    check.findings.push_back(finding(leaf.path, Kind::kProblem,
                                     "(" + leaf_text(leaf) + ") could not be compared on rank " +
                                         std::to_string(rank) + ": " + detail::first_line(e.what())));
  }
}

std::vector<Finding> shard_local(int rank, const std::vector<LeafInfo>& leaves,
                                 const Reference& ref, const VerifyOptions& options) {
  RankCheck check = check_rank(rank, leaves, ref, options);
  for (const auto& c : check.comparisons) {
    compare_guarded(check, c, leaves, leaves[check.of(c).leaf].pieces[c.piece].tensor, rank);
  }
  return check.finish(leaves);
}

// ---------------------------------------------------------------------------------------------
// What every rank must agree on before values are compared.

// One key's layout as a rank holds it: sent only when the ranks' layout hashes differ.
struct KeyLayout {
  std::string path;
  std::string text;  // layout_signature(): for messages
  LayoutParts parts;
};

std::string encode_layouts(const std::vector<LeafInfo>& leaves) {
  std::vector<std::pair<const LeafInfo*, std::string>> held;  // with its layout_signature()
  for (const auto& l : leaves) {
    std::string sig = layout_signature(l);
    if (!sig.empty()) held.emplace_back(&l, std::move(sig));
  }
  std::string out;
  put_field(out, std::to_string(held.size()));
  for (const auto& [l, sig] : held) {
    const LayoutParts parts = layout_parts(*l, sig);
    put_field(out, l->path);
    put_field(out, sig);
    put_field(out, parts.form);
    put_ints(out, std::vector<std::int64_t>(parts.mesh_ranks.begin(), parts.mesh_ranks.end()));
  }
  return out;
}

std::vector<KeyLayout> decode_layouts(const std::string& data) {
  detail::FieldReader fr(data, "layouts");
  std::vector<KeyLayout> out(static_cast<std::size_t>(fr.number()));
  for (auto& k : out) {
    k.path = fr.next();
    k.text = fr.next();
    k.parts.form = fr.next();
    for (auto r : read_ints(fr)) k.parts.mesh_ranks.push_back(static_cast<int>(r));
  }
  return out;
}

// Whether the ranks holding one key agree on its layout: the same form everywhere, and meshes
// that are the same or disjoint lines each held by every one of its members.
bool layouts_agree(const std::map<int, const KeyLayout*>& holders) {
  const KeyLayout* first = holders.begin()->second;
  std::map<int, const std::vector<int>*> member_of;  // rank -> the held mesh it belongs to
  for (const auto& [r, k] : holders) {
    if (k->parts.form != first->parts.form) return false;
    for (int m : k->parts.mesh_ranks) {
      auto [it, fresh] = member_of.emplace(m, &k->parts.mesh_ranks);
      if (!fresh && *it->second != k->parts.mesh_ranks) return false;  // meshes overlap
    }
  }
  // A rank inside some held mesh holds the key on that mesh.
  for (const auto& [r, k] : holders) {
    const auto it = member_of.find(r);
    if (it != member_of.end() && *it->second != k->parts.mesh_ranks) return false;
  }
  return true;
}

// Keys whose layout the ranks that hold them disagree on, each as a finding for every such rank
// (the same text everywhere, so the report merges them), from every rank's layouts.
std::set<std::string> layout_disagreements(const std::vector<std::vector<KeyLayout>>& by_rank,
                                           std::vector<std::vector<Finding>>* extra) {
  const int size = static_cast<int>(by_rank.size());
  std::map<std::string, std::map<int, const KeyLayout*>> seen;  // path -> rank -> layout
  for (int r = 0; r < size; ++r) {
    for (const auto& k : by_rank[static_cast<std::size_t>(r)]) seen[k.path].emplace(r, &k);
  }
  std::set<std::string> out;
  for (const auto& [path, holders] : seen) {
    if (layouts_agree(holders)) continue;
    out.insert(path);
    std::map<std::string, std::vector<int>> by_text;
    for (const auto& [r, k] : holders) by_text[k->text].push_back(r);
    std::string text = "the ranks disagree on its layout:";
    bool first = true;
    for (const auto& [sig, ranks] : by_text) {
      text += std::string(first ? " " : "; ") + sig + " on " + ranks_text(ranks, size);
      first = false;
    }
    for (const auto& [r, k] : holders) {
      (*extra)[static_cast<std::size_t>(r)].push_back(finding(path, Kind::kProblem, text));
    }
  }
  return out;
}

// Reduces this rank's Partial DTensors in path order (every member of a mesh reaches the same
// keys in the same order: their layouts agree), skipping `skip`. A failure is the key's problem.
void reduce_partials(std::vector<LeafInfo>& leaves, const std::set<std::string>& skip, int rank) {
  std::vector<std::size_t> order;
  for (std::size_t i = 0; i < leaves.size(); ++i) {
    if (leaves[i].partial && skip.count(leaves[i].path) == 0) order.push_back(i);
  }
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return leaves[a].path < leaves[b].path; });
  for (std::size_t i : order) {
    LeafInfo& leaf = leaves[i];
    leaf.partial = false;
    if (!leaf.held || leaf.source == nullptr || !leaf.source->is<DTensor>()) continue;
    try {
      const DTensor reduced = leaf.source->as<DTensor>().reduce_partials();
      leaf.pieces.at(0).tensor = reduced.local();
    } catch (const std::exception& e) {
      leaf.pieces.clear();
      leaf.problem = "could not reduce its Partial placement on rank " + std::to_string(rank) +
                     ": " + detail::first_line(e.what());
    }
  }
}

// Gather: every rank's pieces go to `root` in batches of about options.gather_batch_bytes per
// rank; the root checks each rank's leaves as that rank would have. Returns the findings by rank
// on the root, nothing elsewhere.
std::vector<std::vector<Finding>> gather_and_check(Context& context,
                                                   const std::vector<LeafInfo>& mine,
                                                   const Reference& ref,
                                                   const VerifyOptions& options, int root) {
  const int rank = context.rank();
  const int size = context.world_size();
  const std::vector<std::string> described =
      detail::exchange_text(&context, "verify-leaves", encode_leaves(mine));
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
  const ProcessGroupPtr pg = context.process_group();
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
        const at::Tensor t = mine[s.leaf].pieces[s.piece].tensor;
        if (s.bytes > 0 && t.defined() && !t.is_meta() && mine[s.leaf].problem.empty()) {
          try {
            send.narrow(0, at_byte, s.bytes).copy_(detail::as_bytes(t.detach().cpu()));
          } catch (const std::exception&) {
            // Unreadable here: this rank still takes part in the gather (with zeros, which
            // the root then finds wrong) instead of leaving the others waiting.
            send.narrow(0, at_byte, s.bytes).zero_();
          }
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
          compare_guarded(check, c, leaves[static_cast<std::size_t>(r)], actual, r);
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
  const ContextPtr context = detail::verify_context(options, dist);
  const bool distributed = context && context->world_size() > 1;
  const int rank = distributed ? context->rank() : 0;
  const int size = distributed ? context->world_size() : 1;
  std::vector<LeafInfo> mine = describe_dict(dist, rank);
  const Reference ref(reference);
  const auto reference_keys = static_cast<std::int64_t>(ref.leaves.size());
  const bool partial = std::any_of(mine.begin(), mine.end(), [](const LeafInfo& l) { return l.partial; });
  if (!distributed) {
    if (partial) reduce_partials(mine, {}, rank);
    return report({shard_local(rank, mine, ref, options)}, reference_keys, options);
  }
  const VerifyStrategy asked = effective_strategy(options, *context);
  // One exchange settles the common case: every rank holds a reference and sends its shard-local
  // findings ('1'), with the hash of its layouts and whether it holds Partial values ('0' from a
  // rank without a reference, 'h' when the gather strategy is asked for or Partial values must
  // be reduced first, 'x' with the error when this rank could not check).
  const bool try_local = asked != VerifyStrategy::kGather && !reference.empty() && !partial;
  char flag = try_local ? '1' : reference.empty() ? '0' : 'h';
  std::string payload;
  if (try_local) {
    try {
      payload = encode_findings(shard_local(rank, mine, ref, options), reference_keys);
    } catch (const std::exception& e) {
      flag = 'x';
      payload = detail::first_line(e.what());
    }
  }
  std::string first_value;
  put_field(first_value, std::string(1, flag));
  put_field(first_value, std::to_string(layout_hash(mine)));
  put_field(first_value, partial ? "1" : "0");
  put_field(first_value, payload);
  const std::vector<std::string> first = detail::exchange_text(context.get(), "verify", first_value);
  std::vector<char> flags;
  std::vector<std::string> hashes;
  std::vector<std::string> first_payloads;
  bool any_partial = false;
  for (int r = 0; r < size; ++r) {
    detail::FieldReader fr(first[static_cast<std::size_t>(r)], "verification summary");
    flags.push_back(fr.next().at(0));
    hashes.push_back(fr.next());
    any_partial |= fr.next() == "1";
    first_payloads.push_back(fr.next());
  }
  std::vector<int> without;
  std::vector<int> failed;
  int root = -1;
  for (int r = 0; r < size; ++r) {
    const char f = flags[static_cast<std::size_t>(r)];
    if (f == '0') {
      without.push_back(r);
    } else if (root < 0) {
      root = r;
    }
    if (f == 'x') failed.push_back(r);
  }
  if (!failed.empty()) {
    auto out = ::testing::AssertionFailure();
    out << "state dict could not be verified: an error on " << ranks_text(failed, size);
    for (int r : failed) out << "\n  rank " << r << ": " << first_payloads[static_cast<std::size_t>(r)];
    return out;
  }
  if (asked == VerifyStrategy::kShardLocal && !without.empty()) {
    return ::testing::AssertionFailure()
           << "shard-local verification needs the reference on every rank; "
           << ranks_text(without, size) << " passed an empty reference (use the gather strategy)";
  }
  // Layouts that differ between ranks: one more exchange names the keys (only then).
  std::vector<std::vector<Finding>> extra(static_cast<std::size_t>(size));
  std::set<std::string> disagree;
  if (std::any_of(hashes.begin(), hashes.end(), [&](const std::string& h) { return h != hashes[0]; })) {
    const auto all = detail::exchange_text(context.get(), "verify-layouts", encode_layouts(mine));
    std::vector<std::vector<KeyLayout>> by_rank;
    for (const auto& a : all) by_rank.push_back(decode_layouts(a));
    disagree = layout_disagreements(by_rank, &extra);
  }
  if (any_partial) reduce_partials(mine, disagree, rank);

  std::vector<std::string> payloads;
  std::int64_t keys = reference_keys;
  const bool all_local = std::all_of(flags.begin(), flags.end(), [](char f) { return f == '1'; });
  if (all_local && !any_partial) {
    payloads = first_payloads;
  } else if (asked != VerifyStrategy::kGather && without.empty()) {
    // Shard-local after the Partial values were reduced.
    payloads = detail::exchange_text(
        context.get(), "verify-reduced",
        encode_findings(shard_local(rank, mine, ref, options), reference_keys));
  } else {
    if (root < 0) root = 0;
    const auto by_rank = gather_and_check(*context, mine, ref, options, root);
    std::string mine_payload;
    if (rank == root) {
      put_field(mine_payload, std::to_string(size));
      for (const auto& f : by_rank) put_field(mine_payload, encode_findings(f, reference_keys));
    }
    const auto all = detail::exchange_text(context.get(), "verify-findings", mine_payload);
    detail::FieldReader r(all[static_cast<std::size_t>(root)], "verification findings");
    const auto n = r.number();
    for (long long i = 0; i < n; ++i) payloads.push_back(r.next());
  }
  std::vector<std::vector<Finding>> by_rank;
  for (std::size_t r = 0; r < payloads.size(); ++r) {
    std::int64_t k = 0;
    by_rank.push_back(decode_findings(payloads[r], &k));
    keys = std::max(keys, k);
    for (auto& f : extra[r]) by_rank.back().push_back(std::move(f));
  }
  return report(by_rank, keys, options);
}

VerifyOptions VerifyOptions::like_pytorch() {
  VerifyOptions o;
  o.compare = torch_allclose();
  o.python_numbers = true;
  return o;
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
