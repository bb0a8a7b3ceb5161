// Plain gtest tests, built twice: with c10dtest::main and with gtest's own main. Every rank does
// the same, so c10dtest's output must be gtest's, line for line (test/driver/printer_test.cpp).
// C10DTEST_PRINTER_ENV picks what the global environment does: "" (nothing), setup-fatal,
// setup-failure, setup-skip or teardown-failure.
#include <gtest/gtest.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace {

std::string mode() {
  const char* m = std::getenv("C10DTEST_PRINTER_ENV");
  return m != nullptr ? m : "";
}

class Environment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (mode() == "setup-fatal") FAIL() << "the environment cannot start";
    if (mode() == "setup-failure") ADD_FAILURE() << "the environment starts with a complaint";
    if (mode() == "setup-skip") GTEST_SKIP() << "no such device here";
  }
  void TearDown() override {
    if (mode() == "teardown-failure") ADD_FAILURE() << "the environment leaves a mess";
  }
};

[[maybe_unused]] ::testing::Environment* const environment =
    ::testing::AddGlobalTestEnvironment(new Environment);

TEST(Plain, Passes) { EXPECT_EQ(1 + 1, 2); }

TEST(Plain, FailsTwice) {
  const int three = 3;
  EXPECT_EQ(three, 4);
  ADD_FAILURE() << "a second failure\nover two lines";
}

TEST(Plain, Throws) { throw std::runtime_error("thrown from the test body"); }

TEST(Plain, Skips) { GTEST_SKIP() << "nothing to do here"; }

TEST(Plain, SucceedsOutLoud) { SUCCEED() << "a success part, which printers leave out"; }

TEST(Plain, DISABLED_Off) {}

class SetUpFails : public ::testing::Test {
 public:
  static void SetUpTestSuite() { ADD_FAILURE() << "SetUpTestSuite cannot prepare"; }
};

TEST_F(SetUpFails, First) {}
TEST_F(SetUpFails, Second) {}

class TearDownFails : public ::testing::Test {
 public:
  static void TearDownTestSuite() { ADD_FAILURE() << "TearDownTestSuite leaves a mess"; }
};

TEST_F(TearDownFails, Passes) {}

class FixtureSetUpFails : public ::testing::Test {
 protected:
  void SetUp() override { FAIL() << "the fixture cannot start"; }
};

TEST_F(FixtureSetUpFails, NeverRuns) { ADD_FAILURE() << "the body ran after a fatal SetUp"; }

class Param : public ::testing::TestWithParam<int> {};

TEST_P(Param, IsOdd) { EXPECT_EQ(GetParam() % 2, 1) << "the parameter is " << GetParam(); }

INSTANTIATE_TEST_SUITE_P(Small, Param, ::testing::Values(1, 2, 3));

template <typename T>
class Typed : public ::testing::Test {};

using Types = ::testing::Types<int, double>;
TYPED_TEST_SUITE(Typed, Types);

TYPED_TEST(Typed, IsIntegral) { EXPECT_TRUE(std::is_integral<TypeParam>::value); }

}  // namespace

#ifdef C10DTEST_PRINTER_PLAIN_MAIN
// gtest's own gtest_main prints a line of its own first; this is a plain gtest program.
int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
#endif
