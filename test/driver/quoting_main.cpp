// main() of driver_test and printer_test. Their failure messages quote child output, which holds
// gtest's "[  SKIPPED ]" lines, and CTest marks a test skipped when its output matches that:
// gtest_discover_tests sets SKIP_REGULAR_EXPRESSION "\[  SKIPPED \]" itself, and CTest adds our
// own expressions to it instead of replacing it. A failing test would then read as skipped.
// This printer writes quoted lines as "[  SKIPPED* ]", so only a test that really skipped
// prints the real one.
#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace {

class QuotingPrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit QuotingPrinter(::testing::TestEventListener* inner) : inner_(inner) {}

  void OnTestProgramStart(const ::testing::UnitTest& u) override { inner_->OnTestProgramStart(u); }
  void OnTestIterationStart(const ::testing::UnitTest& u, int i) override {
    inner_->OnTestIterationStart(u, i);
  }
  void OnEnvironmentsSetUpStart(const ::testing::UnitTest& u) override {
    inner_->OnEnvironmentsSetUpStart(u);
  }
  void OnEnvironmentsSetUpEnd(const ::testing::UnitTest& u) override {
    inner_->OnEnvironmentsSetUpEnd(u);
  }
  void OnTestSuiteStart(const ::testing::TestSuite& s) override { inner_->OnTestSuiteStart(s); }
#ifndef GTEST_REMOVE_LEGACY_TEST_CASEAPI_
  void OnTestCaseStart(const ::testing::TestCase& s) override { inner_->OnTestCaseStart(s); }
  void OnTestCaseEnd(const ::testing::TestCase& s) override { inner_->OnTestCaseEnd(s); }
#endif
  void OnTestStart(const ::testing::TestInfo& t) override { inner_->OnTestStart(t); }
  void OnTestDisabled(const ::testing::TestInfo& t) override { inner_->OnTestDisabled(t); }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.type() == ::testing::TestPartResult::kSkip) {
      inner_->OnTestPartResult(r);
      return;
    }
    std::string m = r.message();
    const std::string skipped = "[  SKIPPED ]";
    for (auto at = m.find(skipped); at != std::string::npos; at = m.find(skipped, at)) {
      m.replace(at, skipped.size(), "[  SKIPPED* ]");
    }
    inner_->OnTestPartResult(::testing::TestPartResult(r.type(), r.file_name(), r.line_number(),
                                                       m.c_str()));
  }
  void OnTestEnd(const ::testing::TestInfo& t) override { inner_->OnTestEnd(t); }
  void OnTestSuiteEnd(const ::testing::TestSuite& s) override { inner_->OnTestSuiteEnd(s); }
  void OnEnvironmentsTearDownStart(const ::testing::UnitTest& u) override {
    inner_->OnEnvironmentsTearDownStart(u);
  }
  void OnEnvironmentsTearDownEnd(const ::testing::UnitTest& u) override {
    inner_->OnEnvironmentsTearDownEnd(u);
  }
  void OnTestIterationEnd(const ::testing::UnitTest& u, int i) override {
    inner_->OnTestIterationEnd(u, i);
  }
  void OnTestProgramEnd(const ::testing::UnitTest& u) override { inner_->OnTestProgramEnd(u); }

 private:
  std::unique_ptr<::testing::TestEventListener> inner_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (auto* printer = listeners.Release(listeners.default_result_printer())) {
    listeners.Append(new QuotingPrinter(printer));
  }
  return RUN_ALL_TESTS();
}
