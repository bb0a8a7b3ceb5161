#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>

#include "c10dtest/error.hpp"
#include "c10dtest/world.hpp"
#include "common/hash.hpp"
#include "common/text.hpp"
#include "internal.hpp"
#include "lifeline.hpp"
#include "report.hpp"

namespace c10dtest::detail {

namespace {

// Results are awaited without a limit of their own: the watchdog bounds every test.
constexpr std::chrono::milliseconds kNoLimit{std::chrono::hours(24 * 365)};

std::string name_hash(const std::string& s) { return std::to_string(fnv1a(s)); }

std::string ranks_text(const std::vector<int>& ranks, int world_size) {
  return detail::rank_list(ranks) + " of " + std::to_string(world_size);
}

std::int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The rank whose first failure came first (by its wall clock): usually the cause. -1 if none.
int first_to_fail(const std::vector<RankResult>& results) {
  int first = -1;
  for (int r = 0; r < static_cast<int>(results.size()); ++r) {
    const RankResult& res = results[static_cast<std::size_t>(r)];
    if (res.status != 'F') continue;
    const RankResult* best = first < 0 ? nullptr : &results[static_cast<std::size_t>(first)];
    if (best == nullptr || (res.first_failure_us > 0 && (best->first_failure_us == 0 ||
                                                         res.first_failure_us < best->first_failure_us))) {
      first = r;
    }
  }
  return first;
}

}  // namespace

DistributedListener::DistributedListener(World& world, Watchdog& watchdog,
                                         std::unique_ptr<::testing::TestEventListener> printer)
    : world_(world), watchdog_(watchdog), printer_(std::move(printer)) {}

void DistributedListener::print(const std::function<void()>& out) {
  if (!printer_) return;
  OutputTurn turn;  // nothing after the verdict of a run that is ending
  if (turn.granted()) out();
}

void DistributedListener::OnTestProgramStart(const ::testing::UnitTest& unit) {
  print([&] { printer_->OnTestProgramStart(unit); });
}

void DistributedListener::OnTestIterationStart(const ::testing::UnitTest& unit, int iteration) {
  world_.report_->start_iteration(wall_us() / 1000, unit.random_seed());
  world_.report_->begin("c10dtest", "start-up", "", 0, "start-up");
  world_.iteration_ = iteration;
  world_.suite_index_ = -1;
  where_.clear();
  check_test_lists(unit, iteration);
  print([&] {
    // gtest's own lines follow; this one says how many ranks agree on them.
    if (iteration == 0 && world_.world_size() > 1 && !GTEST_FLAG_GET(brief)) {
      std::printf("Note: c10dtest runs %d ranks (%s).\n", world_.world_size(),
                  to_string(world_.launch().launcher));
    }
    printer_->OnTestIterationStart(unit, iteration);
  });
}

void DistributedListener::check_test_lists(const ::testing::UnitTest& unit, int iteration) {
  std::string names;
  for (int i = 0; i < unit.total_test_suite_count(); ++i) {
    const ::testing::TestSuite* suite = unit.GetTestSuite(i);
    for (int j = 0; j < suite->total_test_count(); ++j) {
      const ::testing::TestInfo* info = suite->GetTestInfo(j);
      if (!info->should_run()) continue;
      names += suite->name();
      names += '.';
      names += info->name();
      names += '\n';
    }
  }
  ControlPlane& cp = world_.control();
  const std::string tag = "lists/" + std::to_string(iteration);
  const auto hashes = cp.all_gather(tag, name_hash(names), world_.options().rendezvous_timeout);
  if (std::all_of(hashes.begin(), hashes.end(), [&](const std::string& h) { return h == hashes[0]; })) {
    return;
  }
  const auto lists = cp.all_gather(tag + "/full", names, world_.options().rendezvous_timeout);
  if (world_.rank() == 0) {
    std::ostringstream os;
    os << "c10dtest: the ranks would run different tests; every rank must run the same list in "
          "the same order (same binary, same --gtest_filter, same shuffle seed).\n";
    std::istringstream ref(lists[0]);
    std::vector<std::string> ref_names;
    for (std::string line; std::getline(ref, line);) ref_names.push_back(line);
    for (std::size_t r = 1; r < lists.size(); ++r) {
      if (hashes[r] == hashes[0]) continue;
      std::istringstream other(lists[r]);
      std::vector<std::string> names_r;
      for (std::string line; std::getline(other, line);) names_r.push_back(line);
      std::size_t k = 0;
      while (k < ref_names.size() && k < names_r.size() && ref_names[k] == names_r[k]) ++k;
      os << "  rank " << r << " (" << names_r.size() << " tests) differs from rank 0 ("
         << ref_names.size() << " tests) at position " << k << ": rank 0 has '"
         << (k < ref_names.size() ? ref_names[k] : "<end>") << "', rank " << r << " has '"
         << (k < names_r.size() ? names_r[k] : "<end>") << "'\n";
    }
    std::fputs(os.str().c_str(), stderr);
    std::fflush(stderr);
    world_.report_->write_fault(os.str());
  }
  cp.barrier(tag + "/reported", world_.options().rendezvous_timeout);
  world_.lifeline_->say_bye();  // every rank stops for the same reason: no death to report
  std::fflush(stdout);
  _exit(kExitConfigError);
}

void DistributedListener::arm_for_suite(const std::string& suite_name, bool report) {
  world_.in_test_ = false;
  ++world_.phase_;
  world_.call_seq_ = 0;
  const std::string what = suite_name + " (SetUpTestSuite, TearDownTestSuite or fixture code)";
  set_current_test_name(what);
  if (report) world_.report_->begin(suite_name, "SetUpTestSuite or TearDownTestSuite", "", 0, what);
  watchdog_.arm(what, world_.test_key());
}

void DistributedListener::begin_next(const ::testing::TestInfo& finished) {
  const ::testing::TestSuite* suite = ::testing::UnitTest::GetInstance()->current_test_suite();
  bool after = false;
  for (int i = 0; suite != nullptr && i < suite->total_test_count(); ++i) {
    const ::testing::TestInfo* t = suite->GetTestInfo(i);
    if (t == &finished) {
      after = true;
    } else if (after && t->should_run()) {
      world_.report_->begin(t->test_suite_name(), t->name(), t->file(), t->line(),
                            std::string(t->test_suite_name()) + "." + t->name());
      return;
    }
  }
  const std::string name = finished.test_suite_name();
  world_.report_->begin(name, "SetUpTestSuite or TearDownTestSuite", "", 0,
                        name + " (SetUpTestSuite, TearDownTestSuite or fixture code)");
}

void DistributedListener::enter_environment(const ::testing::UnitTest& unit,
                                            const std::string& what) {
  world_.in_test_ = false;
  ++world_.phase_;
  world_.call_seq_ = 0;
  const std::string name = "global test environment " + what;
  set_current_test_name(name);
  world_.report_->begin("c10dtest", name, "", 0, name);
  watchdog_.arm(name, world_.test_key());
  env_from_ = unit.ad_hoc_test_result().total_part_count();
}

void DistributedListener::OnEnvironmentsSetUpStart(const ::testing::UnitTest& unit) {
  enter_environment(unit, "set-up");
  print([&] { printer_->OnEnvironmentsSetUpStart(unit); });
}

void DistributedListener::OnEnvironmentsSetUpEnd(const ::testing::UnitTest& unit) {
  agree_on_environment(unit, "set-up", true);
  print([&] { printer_->OnEnvironmentsSetUpEnd(unit); });
}

void DistributedListener::OnEnvironmentsTearDownStart(const ::testing::UnitTest& unit) {
  enter_environment(unit, "tear-down");
  print([&] { printer_->OnEnvironmentsTearDownStart(unit); });
}

void DistributedListener::OnEnvironmentsTearDownEnd(const ::testing::UnitTest& unit) {
  agree_on_environment(unit, "tear-down", false);
  print([&] { printer_->OnEnvironmentsTearDownEnd(unit); });
}

void DistributedListener::agree_on_environment(const ::testing::UnitTest& unit,
                                               const std::string& what, bool set_up) {
  const std::string name = "global test environment " + what;
  const ::testing::TestResult& ad_hoc = unit.ad_hoc_test_result();
  const RankResult mine = result_of(name, ad_hoc, 0, env_from_);
  if (mine.status == 'F') world_.release_process_groups();
  const std::vector<RankResult> results = exchange(world_.test_key(), mine);
  bool agreed = false;
  print([&] { agreed = print_ranks_parts(results, ad_hoc, env_from_); });
  // gtest runs the tests after a failed set-up, skips them all after a fatal failure and leaves
  // them out after a skip: every rank takes on what any rank had, so all do the same.
  adopt_failures(results, /*keep_fatal=*/set_up);
  const std::vector<int> failing = ranks_with(results, 'F');
  const std::vector<int> skipping = ranks_with(results, 'S');
  if (set_up && !skipping.empty() && mine.status != 'S') {
    // gtest prints a skipped set-up's messages itself, on every rank: the other ranks' is empty.
    adopt_skip(results, skipping, /*say_why=*/world_.rank() == 0);
  }
  if (printer_ && !failing.empty() && !agreed) {
    where_.push_back("the " + name + " failed on " + ranks_text(failing, world_.world_size()));
  }
  if (!failing.empty()) world_.rebuild_process_groups();
  watchdog_.disarm();
  set_current_test_name("");
}

std::vector<int> DistributedListener::ranks_with(const std::vector<RankResult>& results,
                                                 char status) {
  std::vector<int> ranks;
  for (int r = 0; r < static_cast<int>(results.size()); ++r) {
    if (results[static_cast<std::size_t>(r)].status == status) ranks.push_back(r);
  }
  return ranks;
}

void DistributedListener::OnTestSuiteStart(const ::testing::TestSuite& suite) {
  ++world_.suite_index_;
  world_.test_index_ = -1;
  suite_set_up_.clear();
  suite_skip_.clear();
  suite_from_ = 0;
  arm_for_suite(suite.name(), true);
  print([&] { printer_->OnTestSuiteStart(suite); });
}

#ifndef GTEST_REMOVE_LEGACY_TEST_CASEAPI_
void DistributedListener::OnTestCaseStart(const ::testing::TestCase& suite) {
  print([&] { printer_->OnTestCaseStart(suite); });
}

void DistributedListener::OnTestCaseEnd(const ::testing::TestCase& suite) {
  print([&] { printer_->OnTestCaseEnd(suite); });
}
#endif

void DistributedListener::agree_on_suite_set_up() {
  // gtest skips a suite's tests on a rank whose SetUpTestSuite failed; the other ranks must not
  // run them either, or they would wait in collectives for a rank that never comes.
  const ::testing::TestSuite* suite = ::testing::UnitTest::GetInstance()->current_test_suite();
  if (suite == nullptr) return;
  const ::testing::TestResult& ad_hoc = suite->ad_hoc_test_result();
  const RankResult mine = result_of(std::string(suite->name()) + " (SetUpTestSuite)", ad_hoc, 0);
  suite_set_up_ = gather(world_.test_key() + "/setup", mine);
  suite_from_ = ad_hoc.total_part_count();
  suite_set_up_agreed_ = false;
  print([&] { suite_set_up_agreed_ = print_ranks_parts(suite_set_up_, ad_hoc, 0); });
  const std::vector<int> failed = ranks_with(suite_set_up_, 'F');
  if (!failed.empty() && mine.status != 'F') {
    suite_skip_ = "SetUpTestSuite failed on " + ranks_text(failed, world_.world_size());
  }
}

void DistributedListener::OnTestStart(const ::testing::TestInfo& info) {
  ++world_.test_index_;
  world_.in_test_ = true;
  world_.call_seq_ = 0;
  if (world_.test_index_ == 0) agree_on_suite_set_up();
  // Every test of the suite, as gtest does on the rank whose SetUpTestSuite failed.
  if (!suite_skip_.empty()) {
    GTEST_MESSAGE_AT_(info.file(), info.line(), suite_skip_.c_str(),
                      ::testing::TestPartResult::kSkip);
  }
  first_failure_us_ = 0;
  const std::string name = std::string(info.test_suite_name()) + "." + info.name();
  set_current_test_name(name);
  world_.report_->begin(info.test_suite_name(), info.name(), info.file(), info.line(), name);
  watchdog_.arm(name, world_.test_key());
  print([&] { printer_->OnTestStart(info); });
}

void DistributedListener::OnTestDisabled(const ::testing::TestInfo& info) {
  print([&] { printer_->OnTestDisabled(info); });
}

void DistributedListener::OnTestPartResult(const ::testing::TestPartResult& part) {
  // Printed with every rank's parts once the ranks have exchanged them.
  if (part.failed() && first_failure_us_ == 0) first_failure_us_ = wall_us();
}

std::vector<RankResult> DistributedListener::gather(const std::string& key,
                                                    const RankResult& mine) {
  // The usual result: passed, under the same name, on every rank; the exchange then reads back
  // no rank's value (and every rank's result is parsed once).
  RankResult passed;
  passed.test_name = mine.test_name;
  const std::string usual = passed.serialize();
  const auto raw = world_.control().all_gather(key + "/res", mine.serialize(), kNoLimit, usual);
  std::vector<RankResult> results;
  results.reserve(raw.size());
  for (const auto& r : raw) results.push_back(r == usual ? passed : RankResult::parse(r));
  return results;
}

std::vector<RankResult> DistributedListener::exchange(const std::string& key,
                                                      const RankResult& mine) {
  watchdog_.result_posted();
  return gather(key, mine);
}

void DistributedListener::adopt_failures(const std::vector<RankResult>& results,
                                         bool keep_fatal) {
  const int size = world_.world_size();
  for (int r = 0; r < size; ++r) {
    if (r == world_.rank()) continue;
    const RankResult& res = results[static_cast<std::size_t>(r)];
    for (const auto& f : res.failures) {
      const std::string text = "[rank " + std::to_string(r) + " of " + std::to_string(size) +
                               "] " + f.message;
      GTEST_MESSAGE_AT_(f.file.empty() ? nullptr : f.file.c_str(), f.line, text.c_str(),
                        keep_fatal && f.fatal ? ::testing::TestPartResult::kFatalFailure
                                              : ::testing::TestPartResult::kNonFatalFailure);
    }
    if (res.omitted_parts > 0) {
      ADD_FAILURE() << "[rank " << r << " of " << size << "] " << res.omitted_parts
                    << " more failures not shown";
    }
  }
}

void DistributedListener::adopt_skip(const std::vector<RankResult>& results,
                                     const std::vector<int>& skipping, bool say_why) {
  const RankResult& first = results[static_cast<std::size_t>(skipping.front())];
  const std::string why = say_why ? "skipped on " + ranks_text(skipping, world_.world_size()) +
                                        ": " + first.skip_message
                                  : std::string();
  GTEST_MESSAGE_AT_(first.skip_file.empty() ? nullptr : first.skip_file.c_str(),
                    first.skip_line, why.c_str(), ::testing::TestPartResult::kSkip);
}

bool DistributedListener::print_ranks_parts(const std::vector<RankResult>& results,
                                            const ::testing::TestResult& mine, int from) {
  const int size = world_.world_size();
  // Rank 0's own parts whole, from its result; the others' as they travelled.
  std::vector<std::vector<PrintedPart>> by_rank;
  by_rank.reserve(results.size());
  by_rank.push_back(parts_of(mine, from));
  for (std::size_t r = 1; r < results.size(); ++r) by_rank.push_back(parts_of(results[r]));
  // The rank that failed first (usually the cause) is printed first.
  std::vector<int> order(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) order[static_cast<std::size_t>(r)] = r;
  const int first = first_to_fail(results);
  std::stable_partition(order.begin(), order.end(), [&](int r) { return r == first; });
  bool agreed = print_parts(*printer_, by_rank, order);
  for (int r = 1; r < size; ++r) {
    const RankResult& res = results[static_cast<std::size_t>(r)];
    if (res.omitted_parts > 0) {
      std::printf("[rank %d of %d] %d more failures not shown\n", r, size, res.omitted_parts);
      agreed = false;
    }
  }
  return agreed;
}

void DistributedListener::OnTestEnd(const ::testing::TestInfo& info) {
  const std::string name = std::string(info.test_suite_name()) + "." + info.name();
  const RankResult mine = result_of(name, *info.result(), first_failure_us_);
  // A rank that failed may have left its peers inside a collective: dropping its group closes
  // the connections, so their collectives fail at once instead of hanging.
  if (mine.status == 'F') world_.release_process_groups();
  const std::vector<RankResult> results = exchange(world_.test_key(), mine);
  world_.remove_test_temp_dir();  // every rank is done with the test

  const int size = world_.world_size();
  for (int r = 0; r < size; ++r) {
    const RankResult& res = results[static_cast<std::size_t>(r)];
    if (res.test_name != mine.test_name) {
      ADD_FAILURE() << "c10dtest: rank " << r << " of " << size << " ran " << res.test_name
                    << " while rank " << world_.rank() << " ran " << mine.test_name;
    }
  }
  // Rank 0 prints every rank's parts before it takes on the others' (which would repeat them).
  bool agreed = false;
  print([&] { agreed = print_ranks_parts(results, *info.result(), 0); });
  const std::vector<int> failing = ranks_with(results, 'F');
  const std::vector<int> skipping = ranks_with(results, 'S');
  const bool any_failed = !failing.empty() || info.result()->Failed();
  // Every rank records every rank's failures: the verdict (and exit code) is the same on all.
  adopt_failures(results);
  // A test skipped on some ranks did not run everywhere: it is skipped everywhere, never passed.
  if (!any_failed && !skipping.empty() && mine.status != 'S') {
    adopt_skip(results, skipping, /*say_why=*/true);
  }
  // Rank 0 names the ranks in a summary after gtest's where they did not agree.
  if (printer_ && !agreed && !failing.empty()) {
    std::string where = name + " failed on " + ranks_text(failing, size);
    if (failing.size() > 1) where += ", first on rank " + std::to_string(first_to_fail(results));
    where_.push_back(where);
  } else if (printer_ && !any_failed && !skipping.empty() &&
             static_cast<int>(skipping.size()) < size) {
    where_.push_back(name + " was skipped on " + ranks_text(skipping, size));
  }
  // Recorded before anything is printed: a test whose end line is out is in the report. What
  // follows (rebuilding the group, the next test) is what a fault from now on interrupts.
  world_.report_->add_test(info);
  world_.report_->write();
  begin_next(info);
  if (any_failed) world_.rebuild_process_groups();
  print([&] { printer_->OnTestEnd(info); });
  arm_for_suite(info.test_suite_name(), false);
}

void DistributedListener::OnTestSuiteEnd(const ::testing::TestSuite& suite) {
  const std::string name = std::string(suite.name()) + " (suite level)";
  const ::testing::TestResult& ad_hoc = suite.ad_hoc_test_result();
  // SetUpTestSuite's parts were exchanged and printed at the first test: TearDownTestSuite's.
  const RankResult mine = result_of(name, ad_hoc, 0, suite_from_);
  if (mine.status == 'F') world_.release_process_groups();
  const std::vector<RankResult> results = exchange(world_.test_key(), mine);
  bool agreed = false;
  print([&] { agreed = print_ranks_parts(results, ad_hoc, suite_from_); });
  agreed = agreed && (suite_set_up_.empty() || suite_set_up_agreed_);
  std::vector<int> failing;
  for (int r = 0; r < world_.world_size(); ++r) {
    const auto i = static_cast<std::size_t>(r);
    if (results[i].status == 'F' || (i < suite_set_up_.size() && suite_set_up_[i].status == 'F')) {
      failing.push_back(r);
    }
  }
  if (!suite_set_up_.empty()) adopt_failures(suite_set_up_);
  adopt_failures(results);
  if (!failing.empty()) {
    world_.report_->add_suite_failure(suite);
    world_.report_->write();
    world_.rebuild_process_groups();
    if (printer_ && !agreed) {
      where_.push_back(std::string(suite.name()) +
                       " (SetUpTestSuite or TearDownTestSuite) failed on " +
                       ranks_text(failing, world_.world_size()));
    }
  }
  print([&] { printer_->OnTestSuiteEnd(suite); });
  std::fflush(stdout);
  watchdog_.disarm();
  set_current_test_name("");
}

void DistributedListener::OnTestIterationEnd(const ::testing::UnitTest& unit, int iteration) {
  world_.report_->add_unit_failure(unit.ad_hoc_test_result());
  world_.report_->write(/*force=*/true);
  world_.report_->begin("c10dtest", "shutdown", "", 0, "shutdown");
  print([&] {
    printer_->OnTestIterationEnd(unit, iteration);
    // gtest's summary names the tests; this names the ranks, where they did not all agree.
    for (const auto& w : where_) std::printf("c10dtest: %s\n", w.c_str());
    std::fflush(stdout);
  });
}

void DistributedListener::OnTestProgramEnd(const ::testing::UnitTest& unit) {
  print([&] { printer_->OnTestProgramEnd(unit); });
}

}  // namespace c10dtest::detail
