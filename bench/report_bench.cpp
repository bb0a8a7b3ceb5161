// What the always-there XML report costs per test as a suite grows: rank 0 rewrites the file
// (temp file + rename) after a test unless the last rewrite was recent for its cost, and copies
// the report for its crash handler at every test start while the report is under 1 MiB. This
// measures a forced rewrite and that copy for reports that already hold N finished tests, and
// what a run of 1 ms tests pays per test on top of them, beside the same loop without a report.
// Run: build/bench/report_bench (one process).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "gtest/report.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

TEST(ReportBench, PerTestCostAsTheSuiteGrows) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("c10dtest-report-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const ::testing::TestInfo& info = *::testing::UnitTest::GetInstance()->current_test_info();
  std::printf("%8s %10s %11s %16s %20s\n", "tests", "file KiB", "rewrite ms", "begin ms/test",
              "1 ms tests: +ms/test");
  for (int n : {10, 100, 1000, 5000, 10000}) {
    c10dtest::detail::Report report((dir / "r.xml").string(), true, 0, 4);
    for (int i = 0; i < n; ++i) report.add_test(info);  // N finished tests, as in a real run
    constexpr int kReps = 20;
    auto t = Clock::now();
    for (int i = 0; i < kReps; ++i) report.write(/*force=*/true);
    const double write_ms = ms_since(t) / kReps;
    t = Clock::now();
    for (int i = 0; i < kReps; ++i) report.begin("Suite", "Next", "file.cpp", 1, "Suite.Next");
    const double begin_ms = ms_since(t) / kReps;
    const double kib = static_cast<double>(std::filesystem::file_size(dir / "r.xml")) / 1024.0;
    // What a run of 1 ms tests pays per test, the way the listener calls it: begin, the test,
    // the record and the (throttled) rewrite; beside the same loop without the report.
    constexpr int kTests = 300;
    auto one_ms_tests = [&](bool with_report) {
      const auto start = Clock::now();
      for (int i = 0; i < kTests; ++i) {
        if (with_report) report.begin("Suite", "Next", "file.cpp", 1, "Suite.Next");
        const auto until = Clock::now() + std::chrono::milliseconds(1);
        while (Clock::now() < until) {
        }
        if (with_report) {
          report.add_test(info);
          report.write();
        }
      }
      return ms_since(start) / kTests;
    };
    const double bare = one_ms_tests(false);
    const double with = one_ms_tests(true);
    std::printf("%8d %10.0f %11.3f %16.3f %20.3f\n", n, kib, write_ms, begin_ms, with - bare);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
