// Private pieces of the gtest integration layer.
#pragma once

#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "c10dtest/control_plane.hpp"
#include "c10dtest/options.hpp"

namespace c10dtest {

class World;

namespace detail {

// ---- signals.cpp -------------------------------------------------------------------------------
// Fatal signals (SEGV, BUS, FPE, ILL, ABRT) tell the other ranks (through the lifeline), print
// "c10dtest: rank R of W: SIGSEGV (segmentation fault) in test T" and a backtrace to stderr,
// call the handler installed before (a sanitizer's, the user's), then exit with kExitRankDied,
// or die of the signal when core dumps are enabled (RLIMIT_CORE). Called first thing in init()
// (with the rank the environment suggests, -1 when none) and again once the launch is known.
void install_fatal_signal_handlers(int rank, int world_size);
// This process is a rank (true from the start of init) or not (the self-spawn parent, a gtest
// death test's child, a --gtest_list_tests run). Async-signal-safe reads: a process forked from a
// rank (a "fast" death test) is not one, whatever it inherited.
void mark_rank_process(bool rank);
// SIGTERM, SIGINT or SIGHUP that arrived between the crash handlers' installation and the
// lifeline's (which then handles it as if it came now); 0 when none did. Clears it.
int take_early_termination();
bool in_rank_process();
// The "c10dtest: rank R of W: " prefix of the handler's line.
void set_signal_rank(int rank, int world_size);
// Gives the calling thread its own alternate signal stack, so that a stack overflow on it is
// reported. c10dtest calls it on every thread it starts; threads of Gloo, ATen or the user's
// code have none, and a stack overflow there kills the process without a report.
void prepare_thread_for_signals();
// What the handler says the rank was doing: "in test T" ("" when name is empty).
void set_current_test_name(const std::string& name);
// The same for work outside a test: "during start-up", "during shutdown".
void set_current_activity(const std::string& phrase);
// Records the calling thread as the one whose stack capture_main_stack() reads.
void register_main_thread();
// Interrupts the main thread, collects its backtrace and returns it symbolised, one frame a line
// ("" if it did not answer within `wait`).
std::string capture_main_stack(std::chrono::milliseconds wait);

// ---- results -----------------------------------------------------------------------------------
struct FailurePart {
  std::string file;
  int line = -1;
  std::string message;
  bool fatal = false;
};

// One rank's outcome of one test, as it travels through the control plane.
struct RankResult {
  char status = 'P';  // P passed, F failed, S skipped
  std::string test_name;
  std::int64_t first_failure_us = 0;  // wall clock of this rank's first failure
  std::vector<FailurePart> failures;  // at most kMaxParts, each message at most kMaxMessage
  std::string skip_message;
  int omitted_parts = 0;

  static constexpr std::size_t kMaxParts = 10;
  static constexpr std::size_t kMaxMessage = 4000;

  std::string serialize() const;
  // Throws Error on malformed input.
  static RankResult parse(const std::string& data);
};

// This rank's outcome of `result` (a test's, or a suite's ad-hoc result for SetUpTestSuite and
// TearDownTestSuite failures), under `name`.
RankResult result_of(const std::string& name, const ::testing::TestResult& result,
                     std::int64_t first_failure_us);

// ---- watchdog.cpp ------------------------------------------------------------------------------
// A thread per rank with its own control-plane connection: heartbeats, the per-test deadline and
// (on rank 0) detection of dead ranks. It ends the whole run when a test overruns or a rank dies.
class Lifeline;

class Watchdog {
 public:
  Watchdog(std::unique_ptr<ControlPlane> client, const RunOptions& options, Lifeline& lifeline);
  ~Watchdog();

  void start();
  void stop();  // announces this rank's orderly exit, then joins

  // Arms the deadline for the test about to run.
  void arm(const std::string& test_name, const std::string& test_key);
  void set_timeout(std::chrono::milliseconds timeout);
  // This rank has posted its result for the armed test.
  void result_posted();
  void disarm();

 private:
  using Clock = std::chrono::steady_clock;
  void loop();
  // Ranks other than 0: ends this rank when the watchdog's store calls have not come back for
  // longer than the heartbeat timeout (a store whose host stopped answering, or a cut link,
  // leaves a call waiting in recv() for as long as TCP retries: many minutes).
  void guard_loop();
  void beat_and_check();
  void on_deadline();
  void check_peers();
  // After this process did not run for a while: starts the others' silence afresh.
  void forgive_silence(Clock::time_point now);

  std::unique_ptr<ControlPlane> cp_;
  RunOptions options_;
  Lifeline& lifeline_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::thread guard_;
  std::atomic<bool> guard_stop_{false};
  std::atomic<Clock::rep> last_answer_{0};  // when a loop round of store calls last finished
  std::atomic<bool> capturing_{false};       // the loop is capturing the main thread's stack

  std::mutex mu_;
  std::string test_name_;
  std::string test_key_;
  Clock::time_point test_start_{};
  Clock::time_point deadline_ = Clock::time_point::max();
  std::chrono::milliseconds timeout_{0};
  bool posted_ = false;
  bool expired_reported_ = false;
  Clock::time_point expired_at_{};

  Clock::time_point last_beat_{};
  std::vector<std::int64_t> peer_beats_;
  std::vector<Clock::time_point> peer_seen_;
};

// ---- listener.cpp ------------------------------------------------------------------------------
// Replaces gtest's printer: aggregates each test's result over all ranks, makes every rank agree
// on the verdict, and (rank 0 only) prints it once, naming the ranks.
class DistributedListener : public ::testing::EmptyTestEventListener {
 public:
  DistributedListener(World& world, Watchdog& watchdog);

  void OnTestProgramStart(const ::testing::UnitTest& unit) override;
  void OnTestIterationStart(const ::testing::UnitTest& unit, int iteration) override;
  void OnTestSuiteStart(const ::testing::TestSuite& suite) override;
  void OnTestStart(const ::testing::TestInfo& info) override;
  void OnTestPartResult(const ::testing::TestPartResult& part) override;
  void OnTestEnd(const ::testing::TestInfo& info) override;
  void OnTestSuiteEnd(const ::testing::TestSuite& suite) override;
  void OnTestIterationEnd(const ::testing::UnitTest& unit, int iteration) override;

 private:
  // Arms the watchdog for the suite-level code (SetUpTestSuite, TearDownTestSuite, fixture
  // code between tests) of the running suite; `report`: the report's work in progress too.
  void arm_for_suite(const std::string& suite_name, bool report);
  // After `finished`: the report's work in progress is the suite's next test (a fault before it
  // starts interrupts it, as far as the ranks still running it can tell), or the suite's own
  // code after its last test.
  void begin_next(const ::testing::TestInfo& finished);
  // At a suite's first test: if SetUpTestSuite failed on any rank, skip the suite everywhere.
  void agree_on_suite_set_up();
  // Every rank posts `mine` under `key`; returns all ranks' results, parsed.
  std::vector<RankResult> exchange(const std::string& key, const RankResult& mine);
  // Records the other ranks' failures on this rank, so every rank reaches the same verdict.
  void adopt_failures(const std::vector<RankResult>& results);
  void check_test_lists(const ::testing::UnitTest& unit, int iteration);
  void print_end(const ::testing::TestInfo& info, const std::vector<RankResult>& results);
  // "[  FAILED  ] <name> (rank R of W): file:line: message" (rank 0 only); "ranks 0, 2" when
  // several ranks reported the same failure.
  void print_failure(const std::string& name, const std::vector<int>& ranks, const FailurePart& f);
  // Each distinct failure of the `order`ed ranks once, in that order.
  void print_failures(const std::string& name, const std::vector<int>& order,
                      const std::vector<RankResult>& results);

  World& world_;
  Watchdog& watchdog_;
  bool print_;
  bool brief_;
  bool color_;
  std::int64_t first_failure_us_ = 0;
  std::chrono::steady_clock::time_point iteration_start_{};
  struct Outcome {
    std::string name;
    std::string ranks;
  };
  std::vector<Outcome> failed_;
  std::vector<Outcome> skipped_;
  int passed_ = 0;
};

}  // namespace detail
}  // namespace c10dtest
