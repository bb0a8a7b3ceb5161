// The state-dict verifier. Each rank's distributed dict is described as a list of leaves (path,
// type, global shape, dtype, layout, this rank's pieces with their offsets). check_rank() turns
// one rank's leaves and the reference into findings, asking for the value comparisons it needs;
// where those run is the only difference between the strategies: on the owning rank
// (shard-local) or on the rank holding the reference after a gather. Findings of every rank are
// then exchanged and merged into one report, the same on every rank.
#include "c10dtest/verify.hpp"

#include <algorithm>
#include <map>

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
  const ContextPtr context = detail::verify_context(options, dist);
  const bool distributed = context && context->world_size() > 1;
  const int rank = distributed ? context->rank() : 0;
  const int size = distributed ? context->world_size() : 1;
  const std::vector<LeafInfo> mine = describe_dict(dist, rank);
  const Reference ref(reference);
  const auto reference_keys = static_cast<std::int64_t>(ref.leaves.size());
  if (!distributed) {
    return report({shard_local(rank, mine, ref, options)}, reference_keys, options);
  }
  const VerifyStrategy asked = effective_strategy(options, *context);
  // One exchange settles the common case: every rank holds a reference and sends its shard-local
  // findings with the flag ("1" + findings; "0" from a rank without a reference, or when the
  // gather strategy is asked for).
  const bool try_local = asked != VerifyStrategy::kGather && !reference.empty();
  const std::vector<std::string> first = detail::exchange_text(
      context.get(), "verify",
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
