#include "report.hpp"

#include <map>
#include <set>
#include <sstream>

#include "common/text.hpp"

namespace c10dtest::detail::verifier {

namespace {

struct Merged {
  Finding finding;
  std::vector<int> ranks;     // ranks reporting it (with mismatches, for values)
  int first_rank = -1;
  std::map<std::int64_t, MismatchStats> by_replica;  // values: mismatches of each copy
};

}  // namespace

std::string ranks_text(const std::vector<int>& ranks, int world_size) {
  if (world_size > 1 && static_cast<int>(ranks.size()) == world_size) return "every rank";
  return detail::rank_list(ranks);
}

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
        merged.push_back({f, {r}, r, {}});
        if (f.kind == Kind::kValues) merged.back().by_replica[f.replica] = f.stats;
        continue;
      }
      Merged& m = merged[it->second];
      m.ranks.push_back(r);
      if (f.kind != Kind::kValues) continue;
      m.by_replica[f.replica].merge(f.stats);
      // Every rank counts the value's distinct elements: not added up.
      const std::int64_t checked = m.finding.stats.checked;
      if (m.finding.stats.merge(f.stats)) {
        m.first_rank = r;
        m.finding.first_offsets = f.first_offsets;
        m.finding.first_sizes = f.first_sizes;
        m.finding.whole = f.whole;
      }
      m.finding.stats.checked = checked;
    }
  }
  if (merged.empty()) return ::testing::AssertionSuccess();

  // Report order: what is missing or extra, then every other structural finding (types, shapes,
  // dtypes, plain values such as hyperparameters, layouts), then value differences. Only these
  // last are bounded by max_reported_keys: the cause of a failure is never among the keys cut.
  std::vector<const Merged*> missing;
  std::vector<const Merged*> unexpected;
  std::vector<const Merged*> problems;
  std::vector<const Merged*> values;
  std::set<std::string> keys;  // reference keys that differ
  for (const auto& m : merged) {
    if (m.finding.kind != Kind::kUnexpected) keys.insert(m.finding.path);
    switch (m.finding.kind) {
      case Kind::kMissing: missing.push_back(&m); break;
      case Kind::kUnexpected: unexpected.push_back(&m); break;
      case Kind::kProblem: problems.push_back(&m); break;
      case Kind::kValues: values.push_back(&m); break;
    }
  }
  std::ostringstream os;
  os << "state dict does not match the reference: " << keys.size() << " of " << reference_keys
     << " keys differ";
  if (!missing.empty()) os << " (" << missing.size() << " missing)";
  if (!unexpected.empty()) os << ", " << unexpected.size() << " unexpected";
  // The first line names the first key of the report.
  const Merged* first = !missing.empty()      ? missing[0]
                        : !unexpected.empty() ? unexpected[0]
                        : !problems.empty()   ? problems[0]
                                              : values[0];
  os << (keys.size() + unexpected.size() == 1 ? ": '" : "; first '") << first->finding.path
     << "'"
     << (first->finding.kind == Kind::kMissing      ? " (missing)"
         : first->finding.kind == Kind::kUnexpected ? " (unexpected)"
                                                    : "");
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
  for (const Merged* m : problems) {
    const Finding& f = m->finding;
    os << "\n  '" << f.path << "'" << (f.text.rfind("(", 0) == 0 ? " " : ": ") << f.text;
    if (world > 1) os << " [" << ranks_text(m->ranks, world) << "]";
  }
  std::size_t shown = 0;
  std::vector<std::string> rest;
  for (const Merged* m : values) {
    if (shown >= options.max_reported_keys) {
      rest.push_back(m->finding.path);
      continue;
    }
    ++shown;
    const Finding& f = m->finding;
    os << "\n  '" << f.path << "'";
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
    std::vector<MismatchStats> per_copy;
    for (const auto& [replica, stats] : m->by_replica) per_copy.push_back(stats);
    os << ": " << detail::describe(f.stats, per_copy) << "; " << f.text.substr(semi + 2);
  }
  if (!rest.empty()) {
    os << "\n  ... and " << rest.size() << " more key" << (rest.size() == 1 ? "" : "s")
       << " differ in value: ";
    for (std::size_t i = 0; i < rest.size() && i < kNames; ++i) {
      os << (i ? ", " : "") << "'" << rest[i] << "'";
    }
    if (rest.size() > kNames) os << ", ...";
  }
  return ::testing::AssertionFailure() << os.str();
}

}  // namespace c10dtest::detail::verifier
