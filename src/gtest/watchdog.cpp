#include <unistd.h>

#include <cstdio>
#include <sstream>

#include "common/text.hpp"
#include "internal.hpp"
#include "lifeline.hpp"

namespace c10dtest::detail {

namespace {
constexpr std::chrono::milliseconds kTick{50};
constexpr std::chrono::milliseconds kBeatEvery{500};
// How long rank 0 waits for the other ranks' reports (and stacks) after a deadline.
constexpr std::chrono::milliseconds kReportGrace{5000};
// How long other ranks wait for rank 0's verdict before ending on their own.
constexpr std::chrono::milliseconds kAbortGrace{15000};
// Beyond the heartbeat timeout, how long a round of the watchdog's store calls may take before
// the store counts as gone; more while the round captures the main thread's stack (up to 2 s).
constexpr std::chrono::milliseconds kStoreGrace{1000};
constexpr std::chrono::milliseconds kCaptureGrace{3000};
// A loop round that came this much later than asked means this process did not run (SIGSTOP,
// a debugger, a starved machine): what it saw of the others is stale, not their fault.
constexpr std::chrono::milliseconds kPauseGap{1000};
}  // namespace

Watchdog::Watchdog(std::unique_ptr<ControlPlane> client, const RunOptions& options,
                   Lifeline& lifeline)
    : cp_(std::move(client)),
      options_(options),
      lifeline_(lifeline),
      timeout_(options.test_timeout) {}

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
  thread_ = std::thread([this] {
    prepare_thread_for_signals();
    loop();
  });
  if (cp_->rank() != 0) {
    guard_ = std::thread([this] {
      prepare_thread_for_signals();
      guard_loop();
    });
  }
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
  auto last_round = Clock::now();
  while (!stop_) {
    const auto now = Clock::now();
    if (now - last_round > kTick + kPauseGap) forgive_silence(now);
    last_round = now;
    try {
      beat_and_check();
      last_answer_ = Clock::now().time_since_epoch().count();
    } catch (const std::exception& e) {
      if (stop_) break;
      const std::string why = std::string("lost the control plane served by rank 0 (") +
                              e.what() + ")";
      if (cp_->rank() != 0) lifeline_.rank_zero_lost(why);
      lifeline_.leave(kExitRankDied, "c10dtest: rank 0 of " + std::to_string(cp_->world_size()) +
                                         ": " + why + "; ending this rank");
    }
    std::this_thread::sleep_for(kTick);
  }
}

void Watchdog::forgive_silence(Clock::time_point now) {
  // Rank 0: the others' heartbeats stopped only because this process did not read them.
  for (auto& seen : peer_seen_) seen = now;
  last_answer_ = now.time_since_epoch().count();
}

void Watchdog::guard_loop() {
  auto last_round = Clock::now();
  while (!guard_stop_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const auto now = Clock::now();
    if (now - last_round > std::chrono::milliseconds(100) + kPauseGap) {
      // This process was stopped: rank 0's silence during the stop proves nothing.
      last_answer_ = now.time_since_epoch().count();
    }
    last_round = now;
    const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(
        now - Clock::time_point(Clock::duration(last_answer_.load())));
    const auto limit = options_.heartbeat_timeout + (capturing_ ? kCaptureGrace : kStoreGrace);
    if (silent <= limit || guard_stop_) continue;
    lifeline_.rank_zero_lost("had no answer from rank 0's store for " +
                             std::to_string(silent.count()) + " ms");
  }
}

void Watchdog::beat_and_check() {
  const auto now = Clock::now();
  if (now - last_beat_ >= kBeatEvery) {
    cp_->add("hb/" + std::to_string(cp_->rank()), 1);
    last_beat_ = now;
    if (cp_->rank() == 0) check_peers();
  }
  bool expired = false;
  bool waited_too_long = false;
  std::string name;
  {
    std::lock_guard<std::mutex> lock(mu_);
    expired = now >= deadline_ && !expired_reported_;
    waited_too_long = expired_reported_ && now - expired_at_ > kAbortGrace;
    name = test_name_;
  }
  if (expired) on_deadline();
  if (waited_too_long) {
    lifeline_.leave(kExitTimeout, "c10dtest: rank " + std::to_string(cp_->rank()) + " of " +
                                      std::to_string(cp_->world_size()) + ": test " + name +
                                      " ran past its timeout and rank 0 did not end the run; "
                                      "ending this rank.");
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
  capturing_ = true;
  const std::string stack = posted ? "" : capture_main_stack(std::chrono::milliseconds(2000));
  capturing_ = false;
  cp_->set(key + "/expired/" + std::to_string(rank), posted ? "W" : "S" + stack);
  if (rank != 0) return;

  // Rank 0 gathers what the others saw, then ends the run for everybody.
  const auto until = Clock::now() + kReportGrace;
  std::vector<std::string> keys;
  for (int r = 0; r < size; ++r) keys.push_back(key + "/expired/" + std::to_string(r));
  while (Clock::now() < until && !cp_->check(keys)) std::this_thread::sleep_for(kTick);

  std::vector<int> stuck;
  std::vector<int> waiting;
  for (int r = 0; r < size; ++r) (cp_->posted(key + "/res", r) ? waiting : stuck).push_back(r);
  std::ostringstream os;
  os << "[  TIMEOUT ] " << name << " did not finish within " << timeout.count() << " ms on "
     << detail::rank_list(stuck) << " of " << size;
  if (!waiting.empty()) {
    os << " (" << detail::rank_list(waiting) << " finished and waited)";
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
  lifeline_.end_run(kExitTimeout, os.str(), os.str());
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
    std::ostringstream os;
    os << "[  DEAD    ] rank " << r << " of " << cp_->world_size()
       << " stopped responding: no heartbeat for " << silent.count() << " ms during "
       << lifeline_.in_progress() << " (its process is stopped, starved or cut off)\n"
       << "c10dtest: ending all ranks (exit code " << kExitRankDied << ")\n";
    lifeline_.end_run(kExitRankDied, os.str(), os.str());
  }
}

}  // namespace c10dtest::detail
