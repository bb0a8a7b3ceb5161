#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

enum class Color { kNone, kGreen, kRed, kYellow };

bool want_color(Launcher launcher) {
  const std::string flag = GTEST_FLAG_GET(color);
  if (flag == "yes" || flag == "true" || flag == "t" || flag == "1") return true;
  if (flag != "auto") return false;
  // MPI launchers and srun hand ranks a pseudo-terminal whatever the user's output is (a CI
  // log, a pipe): color only on request there.
  if (launcher == Launcher::kOpenMPI || launcher == Launcher::kMPICH ||
      launcher == Launcher::kSlurm) {
    return false;
  }
  const char* term = std::getenv("TERM");
  return isatty(STDOUT_FILENO) != 0 && term != nullptr && std::strcmp(term, "dumb") != 0;
}

std::string name_hash(const std::string& s) { return std::to_string(fnv1a(s)); }

std::string ranks_text(const std::vector<int>& ranks, int world_size) {
  return detail::rank_list(ranks) + " of " + std::to_string(world_size);
}

std::string plural(int n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// Prints a gtest-style tag ("[       OK ] "), colored when asked.
void print_tag(bool color, Color c, const char* tag) {
  if (!color || c == Color::kNone) {
    std::fputs(tag, stdout);
    return;
  }
  const char code = c == Color::kGreen ? '2' : c == Color::kRed ? '1' : '3';
  std::printf("\033[0;3%cm%s\033[m", code, tag);
}

std::int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

DistributedListener::DistributedListener(World& world, Watchdog& watchdog)
    : world_(world),
      watchdog_(watchdog),
      print_(world.rank() == 0),
      brief_(GTEST_FLAG_GET(brief)),
      color_(want_color(world.launch().launcher)) {}

void DistributedListener::OnTestProgramStart(const ::testing::UnitTest&) {}

void DistributedListener::OnTestIterationStart(const ::testing::UnitTest& unit, int iteration) {
  world_.report_->start_iteration(wall_us() / 1000, unit.random_seed());
  world_.report_->begin("c10dtest", "start-up", "", 0, "start-up");
  world_.iteration_ = iteration;
  world_.suite_index_ = -1;
  failed_.clear();
  skipped_.clear();
  passed_ = 0;
  iteration_start_ = std::chrono::steady_clock::now();
  check_test_lists(unit, iteration);
  if (!print_) return;
  if (GTEST_FLAG_GET(repeat) != 1) {
    std::printf("\nRepeating all tests (iteration %d) . . .\n\n", iteration + 1);
  }
  const std::string filter = GTEST_FLAG_GET(filter);
  if (filter != "*") std::printf("Note: Google Test filter = %s\n", filter.c_str());
  if (GTEST_FLAG_GET(shuffle)) {
    std::printf("Note: Randomizing tests' orders with a seed of %d .\n", unit.random_seed());
  }
  print_tag(color_, Color::kGreen, "[==========] ");
  std::printf("Running %s from %s on %s (%s).\n",
              plural(unit.test_to_run_count(), "test").c_str(),
              plural(unit.test_suite_to_run_count(), "test suite").c_str(),
              plural(world_.world_size(), "rank").c_str(), to_string(world_.launch().launcher));
  std::fflush(stdout);
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
  if (print_) {
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

void DistributedListener::OnTestSuiteStart(const ::testing::TestSuite& suite) {
  ++world_.suite_index_;
  world_.test_index_ = -1;
  arm_for_suite(suite.name(), true);
}

void DistributedListener::agree_on_suite_set_up() {
  // gtest skips a suite's tests on a rank whose SetUpTestSuite failed; the other ranks must not
  // run them either, or they would wait in collectives for a rank that never comes.
  const ::testing::TestSuite* suite = ::testing::UnitTest::GetInstance()->current_test_suite();
  const bool failed = suite != nullptr && suite->ad_hoc_test_result().Failed();
  const auto verdicts = world_.control().all_gather(world_.test_key() + "/setup",
                                                    failed ? "F" : "P", kNoLimit);
  std::vector<int> failed_ranks;
  for (int r = 0; r < world_.world_size(); ++r) {
    if (verdicts[static_cast<std::size_t>(r)] == "F") failed_ranks.push_back(r);
  }
  if (failed_ranks.empty() || failed) return;
  const std::string why = "SetUpTestSuite failed on " +
                          ranks_text(failed_ranks, world_.world_size());
  GTEST_MESSAGE_AT_(__FILE__, __LINE__, why.c_str(), ::testing::TestPartResult::kSkip);
}

void DistributedListener::OnTestStart(const ::testing::TestInfo& info) {
  ++world_.test_index_;
  world_.in_test_ = true;
  world_.call_seq_ = 0;
  if (world_.test_index_ == 0) agree_on_suite_set_up();
  first_failure_us_ = 0;
  const std::string name = std::string(info.test_suite_name()) + "." + info.name();
  set_current_test_name(name);
  world_.report_->begin(info.test_suite_name(), info.name(), info.file(), info.line(), name);
  watchdog_.arm(name, world_.test_key());
  if (print_ && !brief_) {
    print_tag(color_, Color::kGreen, "[ RUN      ] ");
    std::printf("%s\n", name.c_str());
    std::fflush(stdout);
  }
}

void DistributedListener::OnTestPartResult(const ::testing::TestPartResult& part) {
  if (part.failed() && first_failure_us_ == 0) first_failure_us_ = wall_us();
}

std::vector<RankResult> DistributedListener::exchange(const std::string& key,
                                                      const RankResult& mine) {
  watchdog_.result_posted();
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

void DistributedListener::adopt_failures(const std::vector<RankResult>& results) {
  const int size = world_.world_size();
  for (int r = 0; r < size; ++r) {
    if (r == world_.rank()) continue;
    const RankResult& res = results[static_cast<std::size_t>(r)];
    for (const auto& f : res.failures) {
      const std::string text = "[rank " + std::to_string(r) + " of " + std::to_string(size) +
                               "] " + f.message;
      GTEST_MESSAGE_AT_(f.file.empty() ? nullptr : f.file.c_str(), f.line, text.c_str(),
                        ::testing::TestPartResult::kNonFatalFailure);
    }
    if (res.omitted_parts > 0) {
      ADD_FAILURE() << "[rank " << r << " of " << size << "] " << res.omitted_parts
                    << " more failures not shown";
    }
  }
}

void DistributedListener::OnTestEnd(const ::testing::TestInfo& info) {
  const std::string name = std::string(info.test_suite_name()) + "." + info.name();
  const RankResult mine = result_of(name, *info.result(), first_failure_us_);
  // A rank that failed may have left its peers inside a collective: dropping its group closes
  // the connections, so their collectives fail at once instead of hanging.
  if (mine.status == 'F') world_.release_process_groups();
  const std::vector<RankResult> results = exchange(world_.test_key(), mine);

  const int size = world_.world_size();
  bool any_failed = false;
  std::vector<int> skipped_ranks;
  for (int r = 0; r < size; ++r) {
    const RankResult& res = results[static_cast<std::size_t>(r)];
    if (res.test_name != mine.test_name) {
      ADD_FAILURE() << "c10dtest: rank " << r << " of " << size << " ran " << res.test_name
                    << " while rank " << world_.rank() << " ran " << mine.test_name;
      any_failed = true;
    }
    if (res.status == 'F') any_failed = true;
    if (res.status == 'S') skipped_ranks.push_back(r);
  }
  // Every rank records every rank's failures: the verdict (and exit code) is the same on all.
  adopt_failures(results);
  // A test skipped on some ranks did not run everywhere: it is skipped everywhere, never passed.
  if (!any_failed && !skipped_ranks.empty() && mine.status != 'S') {
    const RankResult& first = results[static_cast<std::size_t>(skipped_ranks.front())];
    const std::string why = "skipped on " + ranks_text(skipped_ranks, size) + ": " +
                            first.skip_message;
    GTEST_MESSAGE_AT_(__FILE__, __LINE__, why.c_str(), ::testing::TestPartResult::kSkip);
  }
  // Recorded before anything is printed: a test whose end line is out is in the report. What
  // follows (rebuilding the group, the next test) is what a fault from now on interrupts.
  world_.report_->add_test(info);
  world_.report_->write();
  begin_next(info);
  if (any_failed) world_.rebuild_process_groups();
  print_end(info, results);
  arm_for_suite(info.test_suite_name(), false);
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

void DistributedListener::OnTestSuiteEnd(const ::testing::TestSuite& suite) {
  const std::string name = std::string(suite.name()) + " (suite level)";
  const RankResult mine = result_of(name, suite.ad_hoc_test_result(), 0);
  if (mine.status == 'F') world_.release_process_groups();
  const std::vector<RankResult> results = exchange(world_.test_key(), mine);
  adopt_failures(results);
  std::vector<int> failing;
  for (int r = 0; r < world_.world_size(); ++r) {
    if (results[static_cast<std::size_t>(r)].status == 'F') failing.push_back(r);
  }
  if (!failing.empty()) {
    world_.report_->add_suite_failure(suite);
    world_.report_->write();
  }
  if (print_) print_failures(name, failing, results);
  if (!failing.empty()) {
    world_.rebuild_process_groups();
    failed_.push_back({name, ranks_text(failing, world_.world_size())});
  }
  std::fflush(stdout);
  watchdog_.disarm();
  set_current_test_name("");
}

void DistributedListener::print_failure(const std::string& name, const std::vector<int>& ranks,
                                        const FailurePart& f) {
  print_tag(color_, Color::kRed, "[  FAILED  ] ");
  std::printf("%s (%s): ", name.c_str(), ranks_text(ranks, world_.world_size()).c_str());
  if (f.line >= 0) std::printf("%s:%d: ", f.file.c_str(), f.line);
  const bool multi_line = f.message.find('\n') != std::string::npos;
  std::printf("%s%s\n", multi_line ? "Failure\n" : "", f.message.c_str());
}

void DistributedListener::print_failures(const std::string& name, const std::vector<int>& order,
                                         const std::vector<RankResult>& results) {
  // A failure several ranks report word for word (a collective check) is printed once.
  std::vector<std::pair<const FailurePart*, std::vector<int>>> unique;
  for (int r : order) {
    for (const auto& f : results[static_cast<std::size_t>(r)].failures) {
      auto it = std::find_if(unique.begin(), unique.end(), [&](const auto& u) {
        return u.first->file == f.file && u.first->line == f.line && u.first->message == f.message;
      });
      if (it == unique.end()) {
        unique.push_back({&f, {r}});
      } else {
        it->second.push_back(r);
      }
    }
  }
  for (auto& [f, ranks] : unique) {
    std::sort(ranks.begin(), ranks.end());
    print_failure(name, ranks, *f);
  }
}

void DistributedListener::print_end(const ::testing::TestInfo& info,
                                    const std::vector<RankResult>& results) {
  const std::string name = std::string(info.test_suite_name()) + "." + info.name();
  const int size = world_.world_size();
  std::vector<int> failing;
  std::vector<int> skipping;
  int first_rank = -1;
  std::int64_t first_us = 0;
  for (int r = 0; r < size; ++r) {
    const RankResult& res = results[static_cast<std::size_t>(r)];
    if (res.status == 'F') {
      failing.push_back(r);
      if (first_rank < 0 || (res.first_failure_us > 0 && res.first_failure_us < first_us)) {
        first_rank = r;
        first_us = res.first_failure_us;
      }
    }
    if (res.status == 'S') skipping.push_back(r);
  }
  if (!failing.empty()) {
    std::string ranks = ranks_text(failing, size);
    if (failing.size() > 1) ranks += ", first on rank " + std::to_string(first_rank);
    failed_.push_back({name, ranks});
  } else if (!skipping.empty()) {
    skipped_.push_back(
        {name, static_cast<int>(skipping.size()) == size ? "" : ranks_text(skipping, size)});
  } else {
    ++passed_;
  }
  if (!print_) return;
  const long long ms = static_cast<long long>(info.result()->elapsed_time());
  if (!failing.empty()) {
    // The rank that failed first (usually the cause) is printed first.
    std::stable_partition(failing.begin(), failing.end(), [&](int r) { return r == first_rank; });
    print_failures(name, failing, results);
    for (int r : failing) {
      const RankResult& res = results[static_cast<std::size_t>(r)];
      if (res.omitted_parts > 0) {
        print_tag(color_, Color::kRed, "[  FAILED  ] ");
        std::printf("%s (rank %d of %d): %d more failures not shown\n", name.c_str(), r, size,
                    res.omitted_parts);
      }
    }
    print_tag(color_, Color::kRed, "[  FAILED  ] ");
    std::printf("%s on %s (%lld ms)\n", name.c_str(), failed_.back().ranks.c_str(), ms);
  } else if (!skipping.empty()) {
    const RankResult& first = results[static_cast<std::size_t>(skipping.front())];
    if (!brief_) {
      print_tag(color_, Color::kYellow, "[  SKIPPED ] ");
      const std::string& where = skipped_.back().ranks;
      std::printf("%s%s%s%s%s (%lld ms)\n", name.c_str(), where.empty() ? "" : " on ",
                  where.c_str(), first.skip_message.empty() ? "" : ": ",
                  first.skip_message.c_str(), ms);
    }
  } else if (!brief_) {
    print_tag(color_, Color::kGreen, "[       OK ] ");
    std::printf("%s (%lld ms)\n", name.c_str(), ms);
  }
  std::fflush(stdout);
}

void DistributedListener::OnTestIterationEnd(const ::testing::UnitTest& unit, int) {
  world_.report_->add_unit_failure(unit.ad_hoc_test_result());
  world_.report_->write(/*force=*/true);
  world_.report_->begin("c10dtest", "shutdown", "", 0, "shutdown");
  if (!print_) return;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - iteration_start_)
                      .count();
  print_tag(color_, Color::kGreen, "[==========] ");
  std::printf("%s from %s ran on %s. (%lld ms total)\n",
              plural(unit.test_to_run_count(), "test").c_str(),
              plural(unit.test_suite_to_run_count(), "test suite").c_str(),
              plural(world_.world_size(), "rank").c_str(), static_cast<long long>(ms));
  print_tag(color_, Color::kGreen, "[  PASSED  ] ");
  std::printf("%s.\n", plural(passed_, "test").c_str());
  if (!skipped_.empty()) {
    print_tag(color_, Color::kYellow, "[  SKIPPED ] ");
    std::printf("%s, listed below:\n", plural(static_cast<int>(skipped_.size()), "test").c_str());
    for (const auto& s : skipped_) {
      print_tag(color_, Color::kYellow, "[  SKIPPED ] ");
      if (s.ranks.empty()) {
        std::printf("%s\n", s.name.c_str());
      } else {
        std::printf("%s (skipped on %s)\n", s.name.c_str(), s.ranks.c_str());
      }
    }
  }
  if (!failed_.empty()) {
    print_tag(color_, Color::kRed, "[  FAILED  ] ");
    std::printf("%s, listed below:\n", plural(static_cast<int>(failed_.size()), "test").c_str());
    for (const auto& f : failed_) {
      print_tag(color_, Color::kRed, "[  FAILED  ] ");
      std::printf("%s (%s)\n", f.name.c_str(), f.ranks.c_str());
    }
    std::printf("\n%2d FAILED %s\n", static_cast<int>(failed_.size()),
                failed_.size() == 1 ? "TEST" : "TESTS");
  }
  std::fflush(stdout);
}

}  // namespace c10dtest::detail
