// Private pieces of the gtest integration layer.
#pragma once

#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
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
  std::string skip_message;           // of the first skip, at skip_file:skip_line
  std::string skip_file;
  int skip_line = -1;
  int omitted_parts = 0;

  static constexpr std::size_t kMaxParts = 10;
  static constexpr std::size_t kMaxMessage = 4000;

  std::string serialize() const;
  // Throws Error on malformed input.
  static RankResult parse(const std::string& data);
};

// This rank's outcome of `result` (a test's, or a suite's or the program's ad-hoc result for
// SetUpTestSuite, TearDownTestSuite and global environment failures), under `name`, from its
// `from`th part on (the parts before were exchanged earlier).
RankResult result_of(const std::string& name, const ::testing::TestResult& result,
                     std::int64_t first_failure_us, int from = 0);
// `message`, cut to RankResult::kMaxMessage characters (and a note of how many more there were).
std::string clip_message(const std::string& message);

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
// ---- printer.cpp -------------------------------------------------------------------------------
// One failure or skip, as gtest's printer shows it.
struct PrintedPart {
  ::testing::TestPartResult::Type type;
  std::string file;  // "" when unknown
  int line;
  std::string message;
};
// The failures and skips of `result` from its `from`th part on, messages whole.
std::vector<PrintedPart> parts_of(const ::testing::TestResult& result, int from);
// Another rank's failures, then its skip, as exchanged.
std::vector<PrintedPart> parts_of(const RankResult& result);
// Prints each distinct part of the ranks' parts (`by_rank`, one list per rank) once through
// gtest's `printer`, the ranks taken in `order`: as gtest prints it when every rank reported it,
// else with "[rank 2 of 4] " or "[ranks 0, 2 of 4] " before its message. True when every part
// was every rank's (the ranks agree).
bool print_parts(::testing::TestEventListener& printer,
                 const std::vector<std::vector<PrintedPart>>& by_rank, const std::vector<int>& order);

// ---- listener.cpp ------------------------------------------------------------------------------
// Every rank's gtest events: results are exchanged and agreed on at each test's, suite's and the
// global environments' end, so every rank reaches the same verdict. Rank 0 prints through gtest's
// own result printer (`printer`, null on the other ranks), which c10dtest feeds with every rank's
// failures: when the ranks agree, the output is gtest's, line for line.
class DistributedListener : public ::testing::EmptyTestEventListener {
 public:
  DistributedListener(World& world, Watchdog& watchdog,
                      std::unique_ptr<::testing::TestEventListener> printer);

  void OnTestProgramStart(const ::testing::UnitTest& unit) override;
  void OnTestIterationStart(const ::testing::UnitTest& unit, int iteration) override;
  void OnEnvironmentsSetUpStart(const ::testing::UnitTest& unit) override;
  void OnEnvironmentsSetUpEnd(const ::testing::UnitTest& unit) override;
  void OnTestSuiteStart(const ::testing::TestSuite& suite) override;
#ifndef GTEST_REMOVE_LEGACY_TEST_CASEAPI_
  // gtest's printer prints its suite lines from these (the repeater calls both names).
  void OnTestCaseStart(const ::testing::TestCase& suite) override;
  void OnTestCaseEnd(const ::testing::TestCase& suite) override;
#endif
  void OnTestStart(const ::testing::TestInfo& info) override;
  void OnTestDisabled(const ::testing::TestInfo& info) override;
  void OnTestPartResult(const ::testing::TestPartResult& part) override;
  void OnTestEnd(const ::testing::TestInfo& info) override;
  void OnTestSuiteEnd(const ::testing::TestSuite& suite) override;
  void OnEnvironmentsTearDownStart(const ::testing::UnitTest& unit) override;
  void OnEnvironmentsTearDownEnd(const ::testing::UnitTest& unit) override;
  void OnTestIterationEnd(const ::testing::UnitTest& unit, int iteration) override;
  void OnTestProgramEnd(const ::testing::UnitTest& unit) override;

 private:
  // Arms the watchdog for the suite-level code (SetUpTestSuite, TearDownTestSuite, fixture
  // code between tests) of the running suite; `report`: the report's work in progress too.
  void arm_for_suite(const std::string& suite_name, bool report);
  // After `finished`: the report's work in progress is the suite's next test (a fault before it
  // starts interrupts it, as far as the ranks still running it can tell), or the suite's own
  // code after its last test.
  void begin_next(const ::testing::TestInfo& finished);
  // At a suite's first test: every rank's SetUpTestSuite outcome; if it failed on any rank, the
  // suite's tests are skipped everywhere.
  void agree_on_suite_set_up();
  // The global environments' set-up or tear-down (`what`) is watched and reported as a test is.
  void enter_environment(const ::testing::UnitTest& unit, const std::string& what);
  // After it: every rank takes on every rank's failures (and a skip), so that every rank runs the
  // tests or skips them alike, and rank 0 prints them.
  void agree_on_environment(const ::testing::UnitTest& unit, const std::string& what, bool set_up);
  // Every rank posts `mine` under `key`; returns all ranks' results, parsed.
  std::vector<RankResult> gather(const std::string& key, const RankResult& mine);
  // gather() of a test's or suite's result, which the watchdog then knows was posted.
  std::vector<RankResult> exchange(const std::string& key, const RankResult& mine);
  // Records the other ranks' failures on this rank, so every rank reaches the same verdict;
  // `keep_fatal`: a fatal failure stays fatal (else every failure is taken as non-fatal).
  void adopt_failures(const std::vector<RankResult>& results, bool keep_fatal = false);
  void check_test_lists(const ::testing::UnitTest& unit, int iteration);
  // Rank 0: every rank's parts (its own whole, from `mine` at its `from`th part on), the rank
  // that failed first first; and "N more failures not shown" for ranks that had more than
  // travel. Called before the others' failures are adopted. True when the ranks agree (every
  // part was every rank's).
  bool print_ranks_parts(const std::vector<RankResult>& results,
                         const ::testing::TestResult& mine, int from);
  // Records a skip of the `skipping` ranks' first (at its place) on this rank, with its reason
  // and ranks when `say_why`.
  void adopt_skip(const std::vector<RankResult>& results, const std::vector<int>& skipping,
                  bool say_why);
  // Rank 0 runs `out` (its printing) unless an ending has claimed the run.
  void print(const std::function<void()>& out);
  // The ranks of `results` with status `status`.
  static std::vector<int> ranks_with(const std::vector<RankResult>& results, char status);

  World& world_;
  Watchdog& watchdog_;
  std::unique_ptr<::testing::TestEventListener> printer_;
  std::int64_t first_failure_us_ = 0;
  int env_from_ = 0;    // the program's ad-hoc parts before the running environment phase
  int suite_from_ = 0;  // the running suite's ad-hoc parts up to its first test (SetUpTestSuite)
  std::vector<RankResult> suite_set_up_;  // every rank's SetUpTestSuite outcome
  bool suite_set_up_agreed_ = true;       // and whether the ranks agreed on it (rank 0)
  std::string suite_skip_;                // why this rank skips the running suite's tests
  // Where tests failed or were skipped on some ranks only, for the summary after gtest's.
  std::vector<std::string> where_;
};

}  // namespace detail
}  // namespace c10dtest
