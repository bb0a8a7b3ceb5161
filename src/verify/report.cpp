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

}  // namespace c10dtest::detail::verifier
