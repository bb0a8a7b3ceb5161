#include <sstream>

#include "c10dtest/error.hpp"
#include "internal.hpp"

namespace c10dtest::detail {

namespace {

void put(std::string& out, const std::string& s) {
  out += std::to_string(s.size());
  out += ':';
  out += s;
}

struct Reader {
  const std::string& data;
  std::size_t pos = 0;

  std::string next() {
    const auto colon = data.find(':', pos);
    if (colon == std::string::npos) throw Error("malformed rank result: " + data.substr(0, 80));
    const std::size_t n = std::stoul(data.substr(pos, colon - pos));
    if (colon + 1 + n > data.size()) throw Error("truncated rank result");
    std::string s = data.substr(colon + 1, n);
    pos = colon + 1 + n;
    return s;
  }
  long long number() { return std::stoll(next()); }
};

std::string clip(const std::string& s) {
  if (s.size() <= RankResult::kMaxMessage) return s;
  return s.substr(0, RankResult::kMaxMessage) + "\n... (" +
         std::to_string(s.size() - RankResult::kMaxMessage) + " more characters)";
}

}  // namespace

std::string RankResult::serialize() const {
  std::string out;
  put(out, std::string(1, status));
  put(out, test_name);
  put(out, std::to_string(first_failure_us));
  put(out, skip_message);
  put(out, std::to_string(omitted_parts));
  put(out, std::to_string(failures.size()));
  for (const auto& f : failures) {
    put(out, f.file);
    put(out, std::to_string(f.line));
    put(out, f.fatal ? "1" : "0");
    put(out, f.message);
  }
  return out;
}

RankResult RankResult::parse(const std::string& data) {
  Reader in{data};
  RankResult r;
  try {
    const std::string status = in.next();
    r.status = status.empty() ? '?' : status[0];
    r.test_name = in.next();
    r.first_failure_us = in.number();
    r.skip_message = in.next();
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
  } catch (const std::logic_error&) {
    throw Error("malformed rank result: " + data.substr(0, 80));
  }
  return r;
}

RankResult result_of(const std::string& name, const ::testing::TestResult& tr,
                     std::int64_t first_failure_us) {
  RankResult r;
  r.test_name = name;
  r.status = tr.Failed() ? 'F' : tr.Skipped() ? 'S' : 'P';
  r.first_failure_us = first_failure_us;
  for (int i = 0; i < tr.total_part_count(); ++i) {
    const ::testing::TestPartResult& part = tr.GetTestPartResult(i);
    if (part.skipped()) {
      if (r.skip_message.empty()) r.skip_message = clip(part.message());
      continue;
    }
    if (!part.failed()) continue;
    if (r.failures.size() >= RankResult::kMaxParts) {
      ++r.omitted_parts;
      continue;
    }
    FailurePart f;
    f.file = part.file_name() != nullptr ? part.file_name() : "";
    f.line = part.line_number();
    f.fatal = part.fatally_failed();
    f.message = clip(part.message());
    r.failures.push_back(std::move(f));
  }
  return r;
}

}  // namespace c10dtest::detail
