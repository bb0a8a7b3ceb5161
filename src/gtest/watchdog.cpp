#include <unistd.h>

#include <cstdio>
#include <sstream>

#include "internal.hpp"

namespace c10dtest::detail {

namespace {
constexpr std::chrono::milliseconds kTick{50};
constexpr std::chrono::milliseconds kBeatEvery{500};
// How long rank 0 waits for the other ranks' reports (and stacks) after a deadline.
constexpr std::chrono::milliseconds kReportGrace{5000};
// How long other ranks wait for rank 0's verdict before ending on their own.
constexpr std::chrono::milliseconds kAbortGrace{15000};
// Beyond the heartbeat timeout, how long a round of the watchdog's store calls may take before
// the store counts as gone (a round may capture the main thread's stack: up to 2 s).
constexpr std::chrono::milliseconds kStoreGrace{3000};

std::string join_ranks(const std::vector<int>& ranks) {
  std::ostringstream os;
  for (std::size_t i = 0; i < ranks.size(); ++i) os << (i ? ", " : "") << ranks[i];
  return os.str();
}
}  // namespace

Watchdog::Watchdog(std::unique_ptr<ControlPlane> client, const RunOptions& options)
    : cp_(std::move(client)), options_(options), timeout_(options.test_timeout) {}

Watchdog::~Watchdog() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  guard_stop_ = true;
  if (guard_.joinable()) guard_.join();
}

void Watchdog::start() {
  const auto now = Clock::now();
  last_beat_ = now - kBeatEvery;
  peer_beats_.assign(static_cast<std::size_t>(cp_->world_size()), -1);
  peer_seen_.assign(static_cast<std::size_t>(cp_->world_size()), now);
  last_answer_ = now.time_since_epoch().count();
  thread_ = std::thread([this] { loop(); });
  if (cp_->rank() != 0) guard_ = std::thread([this] { guard_loop(); });
}

void Watchdog::stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  thread_.join();
  try {
    cp_->set("bye/" + std::to_string(cp_->rank()), "1");
  } catch (const std::exception&) {
  }
  // Only now: the guard also covers a join or a goodbye stuck on a store that stopped answering.
  guard_stop_ = true;
  if (guard_.joinable()) guard_.join();
}

void Watchdog::arm(const std::string& test_name, const std::string& test_key) {
  std::lock_guard<std::mutex> lock(mu_);
  test_name_ = test_name;
  test_key_ = test_key;
  test_start_ = Clock::now();
  timeout_ = options_.test_timeout;
  deadline_ = test_start_ + timeout_;
  posted_ = false;
  expired_reported_ = false;
}

void Watchdog::set_timeout(std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  timeout_ = timeout;
  if (deadline_ != Clock::time_point::max()) deadline_ = test_start_ + timeout;
}

void Watchdog::result_posted() {
  std::lock_guard<std::mutex> lock(mu_);
  posted_ = true;
}

void Watchdog::disarm() {
  std::lock_guard<std::mutex> lock(mu_);
  deadline_ = Clock::time_point::max();
  test_name_.clear();
}

void Watchdog::loop() {
  while (!stop_) {
    try {
      beat_and_check();
      last_answer_ = Clock::now().time_since_epoch().count();
    } catch (const std::exception& e) {
      if (stop_) break;
      std::fprintf(stderr,
                   "c10dtest: rank %d of %d lost the control plane served by rank 0 (%s); "
                   "rank 0 has probably died. Ending this rank.\n",
                   cp_->rank(), cp_->world_size(), e.what());
      std::fflush(stdout);
      std::fflush(stderr);
      _exit(kExitRankDied);
    }
    std::this_thread::sleep_for(kTick);
  }
}

void Watchdog::guard_loop() {
  const auto limit = options_.heartbeat_timeout + kStoreGrace;
  while (!guard_stop_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(
        Clock::now() - Clock::time_point(Clock::duration(last_answer_.load())));
    if (silent <= limit || guard_stop_) continue;
    std::fprintf(stderr,
                 "c10dtest: rank %d of %d lost the control plane served by rank 0 (no answer "
                 "for %lld ms); rank 0 has died or its host is unreachable. Ending this rank.\n",
                 cp_->rank(), cp_->world_size(), static_cast<long long>(silent.count()));
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(kExitRankDied);
  }
}

void Watchdog::beat_and_check() {
  if (cp_->check({"abort"})) {
    const std::string code = cp_->get("abort", std::chrono::milliseconds(1000));
    cp_->add("abort_ack", 1);
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(std::atoi(code.c_str()));
  }
  const auto now = Clock::now();
  if (now - last_beat_ >= kBeatEvery) {
    cp_->add("hb/" + std::to_string(cp_->rank()), 1);
    last_beat_ = now;
    if (cp_->rank() == 0) check_peers();
  }
  bool expired = false;
  bool waited_too_long = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    expired = now >= deadline_ && !expired_reported_;
    waited_too_long = expired_reported_ && now - expired_at_ > kAbortGrace;
  }
  if (expired) on_deadline();
  if (waited_too_long) {
    std::fprintf(stderr,
                 "c10dtest: rank %d of %d: test %s ran past its timeout and rank 0 did not end "
                 "the run; ending this rank.\n",
                 cp_->rank(), cp_->world_size(), test_name_.c_str());
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(kExitTimeout);
  }
}

void Watchdog::on_deadline() {
  std::string name;
  std::string key;
  bool posted = false;
  std::chrono::milliseconds timeout{0};
  {
    std::lock_guard<std::mutex> lock(mu_);
    expired_reported_ = true;
    expired_at_ = Clock::now();
    name = test_name_;
    key = test_key_;
    posted = posted_;
    timeout = timeout_;
  }
  const int rank = cp_->rank();
  const int size = cp_->world_size();
  const std::string stack = posted ? "" : capture_main_stack(std::chrono::milliseconds(2000));
  cp_->set(key + "/expired/" + std::to_string(rank), posted ? "W" : "S" + stack);
  if (rank != 0) return;

  // Rank 0 gathers what the others saw, then ends the run for everybody.
  const auto until = Clock::now() + kReportGrace;
  std::vector<std::string> keys;
  for (int r = 0; r < size; ++r) keys.push_back(key + "/expired/" + std::to_string(r));
  while (Clock::now() < until && !cp_->check(keys)) std::this_thread::sleep_for(kTick);

  std::vector<int> stuck;
  std::vector<int> waiting;
  for (int r = 0; r < size; ++r) {
    (cp_->check({key + "/res/" + std::to_string(r)}) ? waiting : stuck).push_back(r);
  }
  std::ostringstream os;
  os << "[  TIMEOUT ] " << name << " did not finish within " << timeout.count() << " ms on "
     << (stuck.size() == 1 ? "rank " : "ranks ") << join_ranks(stuck) << " of " << size;
  if (!waiting.empty()) {
    os << " (" << (waiting.size() == 1 ? "rank " : "ranks ") << join_ranks(waiting)
       << " finished and waited)";
  }
  os << "\n";
  for (int r : stuck) {
    const std::string k = key + "/expired/" + std::to_string(r);
    std::string trace;
    if (cp_->check({k})) trace = cp_->get(k, std::chrono::milliseconds(1000)).substr(1);
    os << "--- rank " << r << ", main thread:\n"
       << (trace.empty() ? "  (no stack: the rank did not answer)\n" : trace);
  }
  os << "c10dtest: ending all " << size << " ranks (exit code " << kExitTimeout
     << "); raise the limit with --c10dtest_timeout=SECONDS or set_timeout() in the test\n";
  end_run(kExitTimeout, os.str(), size - 1);
}

void Watchdog::check_peers() {
  const auto now = Clock::now();
  for (int r = 1; r < cp_->world_size(); ++r) {
    const auto i = static_cast<std::size_t>(r);
    const std::int64_t beats = cp_->add("hb/" + std::to_string(r), 0);
    if (beats != peer_beats_[i]) {
      peer_beats_[i] = beats;
      peer_seen_[i] = now;
      continue;
    }
    const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(now - peer_seen_[i]);
    if (silent < options_.heartbeat_timeout || cp_->check({"bye/" + std::to_string(r)})) continue;
    std::string name;
    {
      std::lock_guard<std::mutex> lock(mu_);
      name = test_name_;
    }
    std::ostringstream os;
    os << "[  DEAD    ] rank " << r << " of " << cp_->world_size()
       << " stopped responding: no heartbeat for " << silent.count() << " ms"
       << (name.empty() ? std::string() : " during " + name)
       << " (it crashed, was killed or exited early)\n"
       << "c10dtest: ending all ranks (exit code " << kExitRankDied << ")\n";
    end_run(kExitRankDied, os.str(), cp_->world_size() - 2);
  }
}

namespace {

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\n': out += "&#x0A;"; break;
      default: out += c;
    }
  }
  return out;
}

// With --gtest_output=xml[:PATH], gtest would write its report at the end of the run, which a
// run ended by the watchdog never reaches: leave a report that says why instead.
void write_abort_report(const std::string& test_name, const std::string& report) {
  const std::string flag = GTEST_FLAG_GET(output);
  if (flag.rfind("xml", 0) != 0) return;
  std::string path = flag.size() > 4 ? flag.substr(4) : "test_detail.xml";
  if (!path.empty() && path.back() == '/') {
    char exe[4096] = {0};
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    const std::string full = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : "c10dtest";
    path += full.substr(full.rfind('/') + 1) + ".xml";
  }
  const auto dot = test_name.find('.');
  const std::string suite = dot == std::string::npos ? "c10dtest" : test_name.substr(0, dot);
  const std::string name = dot == std::string::npos ? test_name : test_name.substr(dot + 1);
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return;
  std::fprintf(f,
               "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<testsuites tests=\"1\" failures=\"1\" disabled=\"0\" errors=\"0\" "
               "name=\"AllTests\">\n"
               "  <testsuite name=\"%s\" tests=\"1\" failures=\"1\" disabled=\"0\" "
               "errors=\"0\">\n"
               "    <testcase name=\"%s\" status=\"run\" result=\"completed\" "
               "classname=\"%s\">\n"
               "      <failure message=\"%s\" type=\"\"></failure>\n"
               "    </testcase>\n"
               "  </testsuite>\n"
               "</testsuites>\n",
               xml_escape(suite).c_str(), xml_escape(name).c_str(), xml_escape(suite).c_str(),
               xml_escape(report).c_str());
  std::fclose(f);
}

}  // namespace

void Watchdog::end_run(int code, const std::string& report, int acks_expected) {
  std::fflush(stdout);
  std::fputs(report.c_str(), stdout);
  std::fflush(stdout);
  {
    std::lock_guard<std::mutex> lock(mu_);
    write_abort_report(test_name_.empty() ? "c10dtest.run" : test_name_, report);
  }
  try {
    cp_->set("abort", std::to_string(code));
    // Keep serving the store until the others have read the verdict.
    const auto until = Clock::now() + std::chrono::milliseconds(3000);
    while (Clock::now() < until && cp_->add("abort_ack", 0) < acks_expected) {
      std::this_thread::sleep_for(kTick);
    }
  } catch (const std::exception&) {
  }
  std::fflush(stderr);
  _exit(code);
}

}  // namespace c10dtest::detail
