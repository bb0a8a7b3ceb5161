#include "report.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace c10dtest::detail {

namespace {

bool valid_xml_char(unsigned char c) { return c == '\t' || c == '\n' || c == '\r' || c >= 0x20; }

std::string seconds(std::int64_t ms) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.3f", static_cast<double>(ms) / 1000.0);
  return buf;
}

std::string iso8601(std::int64_t ms) {
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  if (localtime_r(&secs, &tm) == nullptr) return "";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03d", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms % 1000));
  return buf;
}

std::atomic<const void*> g_template{nullptr};  // a Report::Template, for the signal handler
std::atomic<bool>* g_sealed = nullptr;
constexpr const char* kCauseMark = "@@c10dtest-cause@@";

void write_bytes(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

// Async-signal-safe: writes `text` escaped for an attribute (attribute) or as CDATA content.
void write_escaped(int fd, const char* text, bool attribute) {
  char buf[256];
  std::size_t len = 0;
  auto put = [&](const char* s) {
    for (; *s != '\0'; ++s) {
      if (len == sizeof(buf)) {
        const ssize_t ignored = ::write(fd, buf, len);
        (void)ignored;
        len = 0;
      }
      buf[len++] = *s;
    }
  };
  for (const char* c = text; *c != '\0'; ++c) {
    const char one[2] = {*c, '\0'};
    const auto u = static_cast<unsigned char>(*c);
    if (u < 0x20 && *c != '\n') continue;
    if (attribute && *c == '&') put("&amp;");
    else if (attribute && *c == '<') put("&lt;");
    else if (attribute && *c == '>') put("&gt;");
    else if (attribute && *c == '"') put("&quot;");
    else if (attribute && *c == '\n') put("&#x0A;");
    else if (!attribute && *c == ']') put("] ");  // never "]]>" inside CDATA
    else put(one);
  }
  const ssize_t ignored = ::write(fd, buf, len);
  (void)ignored;
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string cdata(const std::string& text) {
  std::string clean;
  for (char c : text) {
    if (valid_xml_char(static_cast<unsigned char>(c))) clean += c;
  }
  std::string out = "<![CDATA[";
  std::size_t pos = 0;
  for (auto end = clean.find("]]>"); end != std::string::npos; end = clean.find("]]>", pos)) {
    out += clean.substr(pos, end - pos) + "]]>]]&gt;<![CDATA[";
    pos = end + 3;
  }
  return out + clean.substr(pos) + "]]>";
}

std::string attr(const char* name, const std::string& value) {
  return std::string(" ") + name + "=\"" + Report::escape_attribute(value) + "\"";
}

std::string location(const char* file, int line) {
  const std::string f = file == nullptr ? "unknown file" : file;
  return line < 0 ? f : f + ":" + std::to_string(line);
}

// The children of a <testcase>: failures, skips and properties, as gtest writes them.
std::string result_body(const ::testing::TestResult& result, const std::string& own_tag) {
  std::string out;
  for (int i = 0; i < result.total_part_count(); ++i) {
    const ::testing::TestPartResult& part = result.GetTestPartResult(i);
    if (!part.failed() && !part.skipped()) continue;
    const std::string where = location(part.file_name(), part.line_number());
    const char* tag = part.failed() ? "failure" : "skipped";
    const std::string rank =
        part.failed() && std::strncmp(part.message(), "[rank ", 6) != 0 ? own_tag : "";
    out += std::string("      <") + tag + attr("message", where + "\n" + rank + part.summary()) +
           (part.failed() ? attr("type", "") : "") + ">" +
           cdata(where + "\n" + rank + part.message()) + "</" + tag + ">\n";
  }
  if (result.test_property_count() > 0) {
    out += "      <properties>\n";
    for (int i = 0; i < result.test_property_count(); ++i) {
      const ::testing::TestProperty& p = result.GetTestProperty(i);
      out += "        <property" + attr("name", p.key()) + attr("value", p.value()) + "/>\n";
    }
    out += "      </properties>\n";
  }
  return out;
}

std::string close_case(const std::string& body) {
  return body.empty() ? " />\n" : ">\n" + body + "    </testcase>\n";
}

}  // namespace

Report::Report(std::string path, bool writer, int rank, int world_size)
    : path_(std::move(path)), writer_(writer) {
  if (writer_ && enabled()) g_sealed = &sealed_;
  if (world_size > 1) {
    own_tag_ = "[rank " + std::to_string(rank) + " of " + std::to_string(world_size) + "] ";
  }
  start_ms_ = now_ms();
  now_start_ms_ = start_ms_;
  std::lock_guard<std::mutex> lock(mu_);
  prepare_signal_template();  // a crash at start-up is reported too
}

std::string Report::path_from_gtest_flag() {
  const std::string flag = GTEST_FLAG_GET(output);
  if (flag != "xml" && flag.rfind("xml:", 0) != 0) return "";
  std::string path = flag.size() > 4 ? flag.substr(4) : "test_detail.xml";
  if (!path.empty() && path.back() == '/') {
    char exe[4096] = {0};
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    const std::string full = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : "c10dtest";
    path += full.substr(full.rfind('/') + 1) + ".xml";
  }
  return path;
}

std::string Report::escape_attribute(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '\'': out += "&apos;"; break;
      case '"': out += "&quot;"; break;
      case '\t': out += "&#x09;"; break;
      case '\n': out += "&#x0A;"; break;
      case '\r': out += "&#x0D;"; break;
      default:
        if (valid_xml_char(static_cast<unsigned char>(c))) out += c;
    }
  }
  return out;
}

void Report::start_iteration(std::int64_t timestamp_ms, int random_seed) {
  std::lock_guard<std::mutex> lock(mu_);
  // A template prepared for the last iteration may still be in a signal handler's hands.
  retired_.push_back(std::move(suites_));
  while (retired_.size() > 2) retired_.pop_front();
  suites_.clear();
  suite_index_.clear();
  body_bytes_ = 0;
  start_ms_ = timestamp_ms;
  random_seed_ = random_seed;
}

void Report::begin(const std::string& suite, const std::string& name, const std::string& file,
                   int line, const std::string& display) {
  std::lock_guard<std::mutex> lock(mu_);
  now_display_ = display;
  now_suite_ = suite;
  now_name_ = name;
  now_file_ = file;
  now_line_ = line;
  now_start_ms_ = now_ms();
  prepare_signal_template();  // names what begins now
}

std::string Report::in_progress() const {
  std::lock_guard<std::mutex> lock(mu_);
  return now_display_;
}

void Report::Pieces::add_own(std::string text) {
  own.push_back(std::move(text));
  parts.emplace_back(own.back().data(), own.back().size());
}

void Report::Suite::add(Case c) {
  cases.push_back(std::move(c.xml));
  ++tests;
  failures += c.failed ? 1 : 0;
  skipped += c.skipped ? 1 : 0;
  time_ms += c.time_ms;
}

Report::Suite& Report::suite_named(const std::string& name) {
  const auto found = suite_index_.find(name);
  if (found != suite_index_.end()) return suites_[found->second];
  suite_index_.emplace(name, suites_.size());
  Suite s;
  s.name = name;
  s.timestamp_ms = now_ms();
  suites_.push_back(std::move(s));
  return suites_.back();
}

void Report::add_case(const std::string& suite, Case c) {
  if (!enabled()) return;  // no report asked for: nothing to keep (a case per test adds up)
  std::lock_guard<std::mutex> lock(mu_);
  add_case_locked(suite, std::move(c));
}

void Report::add_case_locked(const std::string& suite, Case c) {
  body_bytes_ += c.xml.size();
  suite_named(suite).add(std::move(c));
}

void Report::add_test(const ::testing::TestInfo& info) {
  const ::testing::TestResult& result = *info.result();
  if (!enabled()) {
    // No report asked for: only what runs now, for messages (a case per test adds up).
    std::lock_guard<std::mutex> lock(mu_);
    suite_code_runs_locked(info.test_suite_name());
    return;
  }
  Case c;
  c.failed = result.Failed();
  c.skipped = !c.failed && result.Skipped();
  c.time_ms = result.elapsed_time();
  c.xml = "    <testcase" + attr("name", info.name());
  if (info.value_param() != nullptr) c.xml += attr("value_param", info.value_param());
  if (info.type_param() != nullptr) c.xml += attr("type_param", info.type_param());
  c.xml += attr("file", info.file()) + attr("line", std::to_string(info.line())) +
           attr("status", "run") + attr("result", c.skipped ? "skipped" : "completed") +
           attr("time", seconds(c.time_ms)) + attr("timestamp", iso8601(result.start_timestamp())) +
           attr("classname", info.test_suite_name()) + close_case(result_body(result, own_tag_));
  std::lock_guard<std::mutex> lock(mu_);
  add_case_locked(info.test_suite_name(), std::move(c));
  // With the record, under one lock: until the listener begins what comes next, a fault
  // interrupts the suite's own code, never this test a second time (once passed, once failed).
  // The crash handler's copy, prepared at the test's start, already says the test failed.
  suite_code_runs_locked(info.test_suite_name());
}

void Report::suite_code_runs_locked(const std::string& suite) {
  now_suite_ = suite;
  now_name_ = "SetUpTestSuite or TearDownTestSuite";
  now_file_.clear();
  now_line_ = 0;
  now_display_ = now_suite_ + " (SetUpTestSuite, TearDownTestSuite or fixture code)";
  now_start_ms_ = now_ms();
}

void Report::add_suite_failure(const ::testing::TestSuite& suite) {
  const ::testing::TestResult& result = suite.ad_hoc_test_result();
  if (!result.Failed()) return;
  Case c;
  c.failed = true;
  c.xml = "    <testcase" + attr("name", "(suite level)") + attr("status", "run") +
          attr("result", "completed") + attr("time", "0.000") +
          attr("timestamp", iso8601(now_ms())) + attr("classname", suite.name()) +
          close_case(result_body(result, own_tag_));
  add_case(suite.name(), std::move(c));
}

void Report::add_unit_failure(const ::testing::TestResult& result) {
  if (!result.Failed()) return;
  Case c;
  c.failed = true;
  c.xml = "    <testcase" + attr("name", "") + attr("status", "run") + attr("result", "completed") +
          attr("time", seconds(result.elapsed_time())) + attr("timestamp", iso8601(now_ms())) +
          attr("classname", "") + close_case(result_body(result, own_tag_));
  add_case("NonTestSuiteFailure", std::move(c));
}

void Report::layout(const std::string& extra_suite, const Case* extra,
                    const std::vector<std::string>& extra_parts, Pieces& out) const {
  int tests = extra != nullptr ? 1 : 0;
  int failures = extra != nullptr && extra->failed ? 1 : 0;
  for (const auto& s : suites_) {
    tests += s.tests;
    failures += s.failures;
  }
  std::string head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites";
  head += attr("tests", std::to_string(tests)) + attr("failures", std::to_string(failures)) +
          attr("disabled", "0") + attr("errors", "0") +
          attr("time", seconds(now_ms() - start_ms_)) + attr("timestamp", iso8601(start_ms_));
  if (GTEST_FLAG_GET(shuffle)) head += attr("random_seed", std::to_string(random_seed_));
  head += attr("name", "AllTests") + ">\n";
  out.add_own(std::move(head));
  auto suite_xml = [&](const std::string& name, std::int64_t stamp, const Suite* s,
                       const Case* c) {
    const int n = (s != nullptr ? s->tests : 0) + (c != nullptr ? 1 : 0);
    const int f = (s != nullptr ? s->failures : 0) + (c != nullptr && c->failed ? 1 : 0);
    const int k = (s != nullptr ? s->skipped : 0) + (c != nullptr && c->skipped ? 1 : 0);
    const std::int64_t ms = (s != nullptr ? s->time_ms : 0) + (c != nullptr ? c->time_ms : 0);
    out.add_own("  <testsuite" + attr("name", name) + attr("tests", std::to_string(n)) +
                attr("failures", std::to_string(f)) + attr("disabled", "0") +
                attr("skipped", std::to_string(k)) + attr("errors", "0") +
                attr("time", seconds(ms)) + attr("timestamp", iso8601(stamp)) + ">\n");
    if (s != nullptr) {
      for (const auto& x : s->cases) out.add_ref(x);
    }
    if (c != nullptr) {
      out.extra_at = out.parts.size();
      for (const auto& x : extra_parts) out.add_own(x);
    }
    out.add_own("  </testsuite>\n");
  };
  bool extra_done = extra == nullptr;
  for (const auto& s : suites_) {
    const bool here = !extra_done && s.name == extra_suite;
    suite_xml(s.name, s.timestamp_ms, &s, here ? extra : nullptr);
    extra_done = extra_done || here;
  }
  if (!extra_done) suite_xml(extra_suite, now_start_ms_, nullptr, extra);
  out.add_own("</testsuites>\n");
}

std::string Report::render(const std::string& extra_suite, const Case* extra) const {
  Pieces p;
  layout(extra_suite, extra,
         extra != nullptr ? std::vector<std::string>{extra->xml} : std::vector<std::string>{}, p);
  std::string out;
  out.reserve(body_bytes_ + 512 * (suites_.size() + 2) + (extra != nullptr ? extra->xml.size() : 0));
  for (const auto& [data, size] : p.parts) out.append(data, size);
  return out;
}

void Report::write_locked(const std::string& text) {
  const std::string tmp = path_ + ".tmp." + std::to_string(getpid());
  FILE* f = std::fopen(tmp.c_str(), "w");
  bool ok = f != nullptr;
  if (ok) {
    ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    ok = std::fclose(f) == 0 && ok;
  }
  if (ok) ok = std::rename(tmp.c_str(), path_.c_str()) == 0;
  if (!ok) {
    const int err = errno;
    std::remove(tmp.c_str());
    if (!warned_) {
      warned_ = true;
      std::fprintf(stderr, "c10dtest: cannot write the XML report %s: %s\n", path_.c_str(),
                   std::strerror(err));
    }
  }
}

void Report::write(bool force) {
  if (!enabled() || !writer_) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (sealed_) return;
  const auto start = std::chrono::steady_clock::now();
  if (!force && last_write_cost_ >= std::chrono::milliseconds(1) &&
      start - last_write_end_ < 20 * last_write_cost_) {
    return;
  }
  write_locked(render("", nullptr));
  last_write_end_ = std::chrono::steady_clock::now();
  last_write_cost_ = last_write_end_ - start;
}

Report::Case Report::fault_case(const std::string& cause) const {
  Case c;
  c.failed = true;
  c.time_ms = now_start_ms_ > 0 ? now_ms() - now_start_ms_ : 0;
  c.xml = "    <testcase" + attr("name", now_name_);
  if (!now_file_.empty()) {
    c.xml += attr("file", now_file_) + attr("line", std::to_string(now_line_));
  }
  const std::string summary = "c10dtest: the run ended here\n" + cause;
  c.xml += attr("status", "run") + attr("result", "completed") + attr("time", seconds(c.time_ms)) +
           attr("timestamp", iso8601(now_start_ms_ > 0 ? now_start_ms_ : start_ms_)) +
           attr("classname", now_suite_) + ">\n      <failure" + attr("message", summary) +
           attr("type", "") + ">" + cdata(summary) + "</failure>\n    </testcase>\n";
  return c;
}

void Report::write_fault(const std::string& cause) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (sealed_.exchange(true)) return;
  const Case c = fault_case(cause);
  write_locked(render(now_suite_, &c));
}

void Report::write_provisional_fault(const std::string& cause) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (sealed_) return;
  const Case c = fault_case(cause);
  write_locked(render(now_suite_, &c));
}

void Report::prepare_signal_template() {
  if (!writer_ || !enabled()) return;
  // The fault case in three pieces around the two places its cause goes. The document points
  // at the finished cases' texts instead of copying them, so this costs a pointer per test.
  const Case c = fault_case(kCauseMark);
  const std::string mark = kCauseMark;
  const auto first = c.xml.find(mark);
  const auto second = c.xml.find(mark, first + mark.size());
  if (first == std::string::npos || second == std::string::npos) return;
  const std::vector<std::string> pieces = {
      c.xml.substr(0, first), c.xml.substr(first + mark.size(), second - first - mark.size()),
      c.xml.substr(second + mark.size())};
  auto t = std::make_unique<Template>();
  t->path = path_;
  t->tmp = path_ + ".tmp." + std::to_string(getpid()) + ".signal";
  layout(now_suite_, &c, pieces, t->pieces);
  t->attribute_at = t->pieces.extra_at + 1;
  t->cdata_at = t->pieces.extra_at + 2;
  g_template.store(t.get());
  templates_.push_back(std::move(t));
  // A handler on another thread may still read the one before: keep two.
  while (templates_.size() > 2) templates_.pop_front();
}

void Report::write_fault_from_signal_handler(const char* cause) {
  const auto* t = static_cast<const Template*>(g_template.load());
  if (t == nullptr || g_sealed == nullptr || g_sealed->exchange(true)) return;
  const int fd = ::open(t->tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const auto& parts = t->pieces.parts;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i == t->attribute_at) write_escaped(fd, cause, true);
    if (i == t->cdata_at) write_escaped(fd, cause, false);
    write_bytes(fd, parts[i].first, parts[i].second);
  }
  if (::close(fd) == 0) ::rename(t->tmp.c_str(), t->path.c_str());
}

}  // namespace c10dtest::detail
