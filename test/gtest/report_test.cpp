// The XML report and the lifeline's exit codes, at world size 1 (the report's behaviour under
// faults is checked by the driver, test/driver/driver_test.cpp, and scripts/chaos.py).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "gtest/lifeline.hpp"
#include "gtest/report.hpp"

namespace {

namespace fs = std::filesystem;
using c10dtest::detail::Report;

std::string read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (auto p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) ++n;
  return n;
}

class ReportFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("c10dtest-report-" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST(ExitCode, OnlyPlainNumbersUpTo255AreCodes) {
  using c10dtest::detail::parse_exit_code;
  EXPECT_EQ(parse_exit_code("0"), 0);
  EXPECT_EQ(parse_exit_code("3"), 3);
  EXPECT_EQ(parse_exit_code("255"), 255);
  for (const char* bad : {"", "256", "-1", " 3", "3 ", "abc", "1e2", "0x3", "9999"}) {
    EXPECT_EQ(parse_exit_code(bad), 4) << "'" << bad << "'";
  }
}

TEST(ReportEscaping, AttributesKeepLinesAndDropWhatXmlCannotHold) {
  EXPECT_EQ(Report::escape_attribute("a<b>&\"c'\n\t\x01\x1f" "d"),
            "a&lt;b&gt;&amp;&quot;c&apos;&#x0A;&#x09;d");
}

TEST_F(ReportFile, AnEmptyRunIsAValidReportAndNoTemporaryFileStays) {
  Report report((dir_ / "r.xml").string(), true, 0, 4);
  report.write();
  const std::string xml = read(dir_ / "r.xml");
  EXPECT_NE(xml.find("<testsuites tests=\"0\" failures=\"0\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("</testsuites>"), std::string::npos) << xml;
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) files += e.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, 1);
}

TEST_F(ReportFile, OnlyTheWriterRewritesTheFileAsTestsFinish) {
  Report report((dir_ / "r.xml").string(), false, 2, 4);
  report.write();
  EXPECT_FALSE(fs::exists(dir_ / "r.xml"));
}

TEST_F(ReportFile, FaultFailsTheWorkInProgressAndSealsTheFile) {
  Report report((dir_ / "r.xml").string(), true, 1, 4);
  report.begin("Suite", "Interrupted", "a.cpp", 12, "Suite.Interrupted");
  EXPECT_EQ(report.in_progress(), "Suite.Interrupted");
  report.write_fault("[  DEAD    ] rank 0 of 4 died ]]> <here> \x02");
  const std::string xml = read(dir_ / "r.xml");
  EXPECT_NE(xml.find("<testsuites tests=\"1\" failures=\"1\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("<testsuite name=\"Suite\" tests=\"1\" failures=\"1\""), std::string::npos)
      << xml;
  EXPECT_NE(xml.find("<testcase name=\"Interrupted\" file=\"a.cpp\" line=\"12\""),
            std::string::npos)
      << xml;
  EXPECT_NE(xml.find("message=\"c10dtest: the run ended here&#x0A;[  DEAD    ] rank 0 of 4 "
                     "died ]]&gt; &lt;here&gt; \""),
            std::string::npos)
      << xml;
  // "]]>" cannot stay inside CDATA; control characters are dropped.
  EXPECT_NE(xml.find("died ]]>]]&gt;<![CDATA[ <here> ]]>"), std::string::npos) << xml;
  EXPECT_EQ(xml.find('\x02'), std::string::npos);
  // Sealed: neither a later test's rewrite nor a second fault replaces the first fault's file.
  report.write();
  report.write_fault("second");
  EXPECT_EQ(read(dir_ / "r.xml"), xml);
}

TEST_F(ReportFile, ThisTestIsRecordedWithItsTaggedFailureAndProperty) {
  Report report((dir_ / "r.xml").string(), true, 3, 4);
  RecordProperty("answer", "42");
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  report.add_test(*info);
  report.write();
  const std::string xml = read(dir_ / "r.xml");
  EXPECT_NE(xml.find("<testcase name=\"ThisTestIsRecordedWithItsTaggedFailureAndProperty\""),
            std::string::npos)
      << xml;
  EXPECT_NE(xml.find("classname=\"ReportFile\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("<property name=\"answer\" value=\"42\"/>"), std::string::npos) << xml;
  EXPECT_EQ(count(xml, "<failure"), 0) << xml;
}

// The copy the crash handler writes from names what began last, even as the first activity.
// It holds the finished tests too (it points at their texts), like a fault report written
// normally.
TEST_F(ReportFile, TheCrashHandlersCopyNamesWhatBeganLast) {
  Report report((dir_ / "r.xml").string(), true, 0, 1);
  report.begin("Suite", "Crashes", "a.cpp", 7, "Suite.Crashes");
  Report::write_fault_from_signal_handler("SIGSEGV (segmentation fault) in test Suite.Crashes");
  std::string xml = read(dir_ / "r.xml");
  EXPECT_NE(xml.find("<testcase name=\"Crashes\" file=\"a.cpp\" line=\"7\""), std::string::npos)
      << xml;
  EXPECT_EQ(xml.find("start-up"), std::string::npos) << xml;

  Report again((dir_ / "r2.xml").string(), true, 0, 1);
  const ::testing::TestInfo& info = *::testing::UnitTest::GetInstance()->current_test_info();
  for (int i = 0; i < 3; ++i) again.add_test(info);
  again.begin("Suite", "Crashes", "a.cpp", 7, "Suite.Crashes");
  Report::write_fault_from_signal_handler("SIGSEGV (segmentation fault) in test Suite.Crashes");
  xml = read(dir_ / "r2.xml");
  EXPECT_EQ(count(xml, "<testcase "), 4) << xml;
  EXPECT_NE(xml.find("<testsuites tests=\"4\" failures=\"1\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("<testsuite name=\"ReportFile\" tests=\"3\" failures=\"0\""),
            std::string::npos)
      << xml;
  EXPECT_EQ(count(xml, "SIGSEGV (segmentation fault) in test Suite.Crashes"), 2) << xml;
  EXPECT_NE(xml.rfind("</testsuites>\n"), std::string::npos) << xml;
  EXPECT_NE(xml.find("<testcase name=\"Crashes\" file=\"a.cpp\" line=\"7\""), std::string::npos)
      << xml;
  EXPECT_EQ(xml.find("start-up"), std::string::npos) << xml;
  EXPECT_NE(xml.find("SIGSEGV (segmentation fault) in test Suite.Crashes"), std::string::npos)
      << xml;
}

// A rewrite of a large report is skipped right after the last one (it would cost more than the
// tests); a forced one, and every later one once enough time has passed, holds every test.
TEST_F(ReportFile, RewritesOfALargeReportAreSpacedOutAndLoseNothing) {
  Report report((dir_ / "r.xml").string(), true, 0, 4);
  const ::testing::TestInfo& info = *::testing::UnitTest::GetInstance()->current_test_info();
  for (int i = 0; i < 20000; ++i) report.add_test(info);
  const auto start = std::chrono::steady_clock::now();
  report.write();
  const auto cost = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(count(read(dir_ / "r.xml"), "<testcase "), 20000);
  if (cost < std::chrono::milliseconds(2)) GTEST_SKIP() << "a 20,000-test rewrite took < 2 ms";
  report.add_test(info);
  report.write();
  EXPECT_EQ(count(read(dir_ / "r.xml"), "<testcase "), 20000) << "rewritten at once";
  report.add_test(info);
  const auto forced = std::chrono::steady_clock::now();
  report.write(/*force=*/true);
  const auto forced_cost = std::chrono::steady_clock::now() - forced;
  EXPECT_EQ(count(read(dir_ / "r.xml"), "<testcase "), 20002);
  std::this_thread::sleep_for(30 * forced_cost);
  report.add_test(info);
  report.write();
  EXPECT_EQ(count(read(dir_ / "r.xml"), "<testcase "), 20003) << "not rewritten once due";
}

TEST(ReportPath, FollowsGtestsOutputFlag) {
  const std::string saved = GTEST_FLAG_GET(output);
  GTEST_FLAG_SET(output, "xml:/tmp/some/file.xml");
  EXPECT_EQ(Report::path_from_gtest_flag(), "/tmp/some/file.xml");
  GTEST_FLAG_SET(output, "xml");
  EXPECT_EQ(Report::path_from_gtest_flag(), "test_detail.xml");
  GTEST_FLAG_SET(output, "xml:/tmp/dir/");
  EXPECT_EQ(Report::path_from_gtest_flag(), "/tmp/dir/launch_test.xml");
  GTEST_FLAG_SET(output, "json:/tmp/r.json");
  EXPECT_EQ(Report::path_from_gtest_flag(), "");
  GTEST_FLAG_SET(output, "");
  EXPECT_EQ(Report::path_from_gtest_flag(), "");
  GTEST_FLAG_SET(output, saved);
}

}  // namespace
