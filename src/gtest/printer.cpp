// Rank 0's console output: gtest's own result printer, given every rank's failures and skips.
#include <algorithm>
#include <cstdio>

#include "common/text.hpp"
#include "internal.hpp"

namespace c10dtest::detail {

namespace {

using Type = ::testing::TestPartResult::Type;

bool same(const PrintedPart& a, const PrintedPart& b) {
  // Another rank's message came clipped: compare rank 0's as it would have travelled.
  return a.type == b.type && a.file == b.file && a.line == b.line &&
         clip_message(a.message) == clip_message(b.message);
}

}  // namespace

std::vector<PrintedPart> parts_of(const ::testing::TestResult& result, int from) {
  std::vector<PrintedPart> parts;
  for (int i = from; i < result.total_part_count(); ++i) {
    const ::testing::TestPartResult& p = result.GetTestPartResult(i);
    if (p.type() == Type::kSuccess) continue;
    parts.push_back({p.type(), p.file_name() != nullptr ? p.file_name() : "", p.line_number(),
                     p.message()});
  }
  return parts;
}

std::vector<PrintedPart> parts_of(const RankResult& result) {
  std::vector<PrintedPart> parts;
  for (const auto& f : result.failures) {
    parts.push_back({f.fatal ? Type::kFatalFailure : Type::kNonFatalFailure, f.file, f.line,
                     f.message});
  }
  // A skip in a test that also failed shows by its location or message.
  if (result.status == 'S' || !result.skip_file.empty() || result.skip_line >= 0 ||
      !result.skip_message.empty()) {
    parts.push_back({Type::kSkip, result.skip_file, result.skip_line, result.skip_message});
  }
  return parts;
}

bool print_parts(::testing::TestEventListener& printer,
                 const std::vector<std::vector<PrintedPart>>& by_rank,
                 const std::vector<int>& order) {
  const int size = static_cast<int>(by_rank.size());
  std::vector<std::pair<const PrintedPart*, std::vector<int>>> unique;
  for (int r : order) {
    for (const auto& part : by_rank[static_cast<std::size_t>(r)]) {
      auto it = std::find_if(unique.begin(), unique.end(),
                             [&](const auto& u) { return same(*u.first, part); });
      if (it == unique.end()) {
        unique.push_back({&part, {r}});
      } else if (std::find(it->second.begin(), it->second.end(), r) == it->second.end()) {
        it->second.push_back(r);
      }
    }
  }
  // A skip without a message (gtest's, of a test it did not run) says nothing another rank's
  // skip at the same place does not say better.
  const auto said_better = [&](const PrintedPart& p) {
    return p.type == Type::kSkip && p.message.empty() &&
           std::any_of(unique.begin(), unique.end(), [&](const auto& u) {
             return u.first->type == Type::kSkip && !u.first->message.empty() &&
                    u.first->file == p.file && u.first->line == p.line;
           });
  };
  bool agreed = true;
  for (auto& [part, ranks] : unique) {
    if (said_better(*part)) continue;
    std::sort(ranks.begin(), ranks.end());
    agreed = agreed && static_cast<int>(ranks.size()) == size;
    // A part every rank reported is printed as gtest prints it; any other names its ranks.
    const std::string tag = static_cast<int>(ranks.size()) == size
                                ? ""
                                : "[" + rank_list(ranks) + " of " + std::to_string(size) + "] ";
    const std::string message = tag + part->message;
    printer.OnTestPartResult(::testing::TestPartResult(
        part->type, part->file.empty() ? nullptr : part->file.c_str(), part->line,
        message.c_str()));
  }
  return agreed;
}

}  // namespace c10dtest::detail
