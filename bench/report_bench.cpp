// What the always-there XML report costs per test as a suite grows: rank 0 renders the report
// and rewrites the file (temp file + rename) after every test, and renders a copy for its crash
// handler at every test start while the report is under 1 MiB. This measures both for reports
// that already hold N finished tests, beside the time to render the same report once, so the
// ratios in one run say how the cost scales. Run: build/bench/report_bench (one process).
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
  std::printf("%8s %10s %14s %16s\n", "tests", "file KiB", "write ms/test", "begin ms/test");
  for (int n : {10, 100, 1000, 5000}) {
    c10dtest::detail::Report report((dir / "r.xml").string(), true, 0, 4);
    for (int i = 0; i < n; ++i) report.add_test(info);  // N finished tests, as in a real run
    constexpr int kReps = 20;
    auto t = Clock::now();
    for (int i = 0; i < kReps; ++i) report.write();
    const double write_ms = ms_since(t) / kReps;
    t = Clock::now();
    for (int i = 0; i < kReps; ++i) report.begin("Suite", "Next", "file.cpp", 1, "Suite.Next");
    const double begin_ms = ms_since(t) / kReps;
    std::printf("%8d %10.0f %14.3f %16.3f\n", n,
                static_cast<double>(std::filesystem::file_size(dir / "r.xml")) / 1024.0,
                write_ms, begin_ms);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
