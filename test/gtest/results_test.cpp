// RankResult travels through the control plane: its encoding must survive any message text.
#include <gtest/gtest.h>

#include "c10dtest/error.hpp"
#include "gtest/internal.hpp"

namespace {

using c10dtest::detail::FailurePart;
using c10dtest::detail::RankResult;

TEST(RankResult, RoundTripsFailuresWithAnyText) {
  RankResult r;
  r.status = 'F';
  r.test_name = "Suite.Test/3";
  r.first_failure_us = 1234567890123;
  r.omitted_parts = 2;
  r.failures.push_back({"a/b.cpp", 41, "Expected: 1:2:3\nsecond line with 7:colons", true});
  r.failures.push_back({"", -1, "", false});
  const RankResult back = RankResult::parse(r.serialize());
  EXPECT_EQ(back.status, 'F');
  EXPECT_EQ(back.test_name, "Suite.Test/3");
  EXPECT_EQ(back.first_failure_us, 1234567890123);
  EXPECT_EQ(back.omitted_parts, 2);
  ASSERT_EQ(back.failures.size(), 2u);
  EXPECT_EQ(back.failures[0].file, "a/b.cpp");
  EXPECT_EQ(back.failures[0].line, 41);
  EXPECT_TRUE(back.failures[0].fatal);
  EXPECT_EQ(back.failures[0].message, "Expected: 1:2:3\nsecond line with 7:colons");
  EXPECT_EQ(back.failures[1].line, -1);
  EXPECT_FALSE(back.failures[1].fatal);
}

TEST(RankResult, RoundTripsASkip) {
  RankResult r;
  r.status = 'S';
  r.skip_message = "needs 4 ranks";
  const RankResult back = RankResult::parse(r.serialize());
  EXPECT_EQ(back.status, 'S');
  EXPECT_EQ(back.skip_message, "needs 4 ranks");
}

TEST(RankResult, MalformedInputIsAnError) {
  EXPECT_THROW(RankResult::parse("garbage"), c10dtest::Error);
  EXPECT_THROW(RankResult::parse("1:F5:ab"), c10dtest::Error);
  EXPECT_THROW(RankResult::parse(""), c10dtest::Error);
}

}  // namespace
