#include <sstream>

#include "c10dtest/error.hpp"
#include "common/fields.hpp"
#include "internal.hpp"

namespace c10dtest::detail {

std::string clip_message(const std::string& s) {
  if (s.size() <= RankResult::kMaxMessage) return s;
  return s.substr(0, RankResult::kMaxMessage) + "\n... (" +
         std::to_string(s.size() - RankResult::kMaxMessage) + " more characters)";
}

std::string RankResult::serialize() const {
  std::string out;
  put_field(out, std::string(1, status));
  put_field(out, test_name);
  put_field(out, std::to_string(first_failure_us));
  put_field(out, skip_message);
  put_field(out, skip_file);
  put_field(out, std::to_string(skip_line));
  put_field(out, std::to_string(omitted_parts));
  put_field(out, std::to_string(failures.size()));
  for (const auto& f : failures) {
    put_field(out, f.file);
    put_field(out, std::to_string(f.line));
    put_field(out, f.fatal ? "1" : "0");
    put_field(out, f.message);
  }
  return out;
}

RankResult RankResult::parse(const std::string& data) {
  FieldReader in(data, "rank result");
  RankResult r;
  const std::string status = in.next();
  r.status = status.empty() ? '?' : status[0];
  r.test_name = in.next();
  r.first_failure_us = in.number();
  r.skip_message = in.next();
  r.skip_file = in.next();
  r.skip_line = static_cast<int>(in.number());
  r.omitted_parts = static_cast<int>(in.number());
  const auto n = in.number();
  for (long long i = 0; i < n; ++i) {
    FailurePart f;
    f.file = in.next();
    f.line = static_cast<int>(in.number());
    f.fatal = in.next() == "1";
    f.message = in.next();
    r.failures.push_back(std::move(f));
  }
  return r;
}

RankResult result_of(const std::string& name, const ::testing::TestResult& tr,
                     std::int64_t first_failure_us, int from) {
  RankResult r;
  r.test_name = name;
  r.first_failure_us = first_failure_us;
  bool failed = false;
  bool skipped = false;
  for (int i = from; i < tr.total_part_count(); ++i) {
    const ::testing::TestPartResult& part = tr.GetTestPartResult(i);
    if (part.skipped()) {
      if (!skipped) {
        r.skip_message = clip_message(part.message());
        r.skip_file = part.file_name() != nullptr ? part.file_name() : "";
        r.skip_line = part.line_number();
      }
      skipped = true;
      continue;
    }
    if (!part.failed()) continue;
    failed = true;
    if (r.failures.size() >= RankResult::kMaxParts) {
      ++r.omitted_parts;
      continue;
    }
    FailurePart f;
    f.file = part.file_name() != nullptr ? part.file_name() : "";
    f.line = part.line_number();
    f.fatal = part.fatally_failed();
    f.message = clip_message(part.message());
    r.failures.push_back(std::move(f));
  }
  // As gtest's TestResult: failed if any part failed, else skipped if any part skipped.
  r.status = failed ? 'F' : skipped ? 'S' : 'P';
  return r;
}

}  // namespace c10dtest::detail
