// compare_tensors: assert_close tolerances and diagnostics that name where and by how much.
#include "c10dtest/compare.hpp"
#include "c10dtest/error.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace {

using c10dtest::CompareContext;
using c10dtest::CompareOptions;
using c10dtest::compare_tensors;

std::string message_of(const ::testing::AssertionResult& r) { return r.message(); }

TEST(CompareTensors, DefaultTolerancesFollowAssertClose) {
  EXPECT_EQ(c10dtest::default_tolerances(at::kFloat), std::make_pair(1.3e-6, 1e-5));
  EXPECT_EQ(c10dtest::default_tolerances(at::kBFloat16), std::make_pair(1.6e-2, 1e-5));
  EXPECT_EQ(c10dtest::default_tolerances(at::kLong), std::make_pair(0.0, 0.0));
  const at::Tensor x = at::full({4}, 1000.0f);
  EXPECT_TRUE(compare_tensors(x, x + 1e-3f));   // within 1e-5 + 1.3e-6 * 1000
  EXPECT_FALSE(compare_tensors(x, x + 2e-2f));  // beyond
  CompareOptions loose;
  loose.rtol = 0.0;
  loose.atol = 0.1;
  EXPECT_TRUE(compare_tensors(x, x + 2e-2f, loose));
}

TEST(CompareTensors, IntegersAndBoolsAreExact) {
  const at::Tensor i = at::arange(10, at::kLong);
  EXPECT_TRUE(compare_tensors(i, i.clone()));
  at::Tensor j = i.clone();
  j[7] = 8;
  EXPECT_EQ(message_of(compare_tensors(i, j)),
            "tensor (shape [10], Long): 1 of 10 elements differ (10%); first at [7] (expected 7, "
            "got 8); max abs diff 1 at [7] (expected 7, got 8); max rel diff 0.142857; allowed: "
            "atol 0 + rtol 0 * |expected|");
  const at::Tensor b = at::ones({3}, at::kBool);
  EXPECT_FALSE(compare_tensors(b, at::zeros({3}, at::kBool)));
}

TEST(CompareTensors, DiagnosticsNameKeyRankGlobalIndexAndValues) {
  at::Tensor expected = at::zeros({4, 3});
  at::Tensor actual = expected.clone();
  actual[1][2] = 0.25;
  actual[3][0] = -0.5;
  const auto r = compare_tensors(expected, actual, {}, CompareContext{"l1.weight", 2, {8, 0}});
  EXPECT_EQ(message_of(r),
            "key 'l1.weight' (rank 2, offsets [8, 0], shape [4, 3], Float): 2 of 12 elements "
            "differ (16.6667%); first at [9, 2] (expected 0, got 0.25); max abs diff 0.5 at "
            "[11, 0] (expected 0, got -0.5); max rel diff inf; allowed: atol 1e-05 + rtol 1.3e-06 "
            "* |expected|");
}

TEST(CompareTensors, ShapeAndDtypeMismatchesAreReportedAsSuch) {
  EXPECT_EQ(message_of(compare_tensors(at::zeros({2, 3}), at::zeros({3, 2}), {}, {"w", 1, {}})),
            "key 'w' (rank 1, shape [3, 2], Float): shape [3, 2] vs expected [2, 3]");
  EXPECT_EQ(message_of(compare_tensors(at::zeros({2}), at::zeros({2}, at::kDouble))),
            "tensor (shape [2], Double): dtype Double vs expected Float");
  CompareOptions any_dtype;
  any_dtype.check_dtype = false;
  EXPECT_TRUE(compare_tensors(at::zeros({2}), at::zeros({2}, at::kDouble), any_dtype));
  EXPECT_EQ(message_of(compare_tensors(at::zeros({2}), at::Tensor(), {}, {"w", -1, {}})),
            "key 'w': actual tensor is undefined");
}

TEST(CompareTensors, NanAndInfinity) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const at::Tensor x = at::tensor({1.0, nan, inf}, at::kDouble);
  EXPECT_FALSE(compare_tensors(x, x.clone()));  // NaN != NaN by default
  CompareOptions nan_ok;
  nan_ok.equal_nan = true;
  EXPECT_TRUE(compare_tensors(x, x.clone(), nan_ok));
  EXPECT_FALSE(compare_tensors(x, at::tensor({1.0, nan, -inf}, at::kDouble), nan_ok));
}

TEST(CompareTensors, ComplexAndHalfPrecision) {
  const at::Tensor c = at::randn({5}, at::kComplexFloat);
  EXPECT_TRUE(compare_tensors(c, c.clone()));
  EXPECT_FALSE(compare_tensors(c, c * 1.01));
  const at::Tensor h = at::randn({5}).to(at::kHalf);
  EXPECT_TRUE(compare_tensors(h, h.clone()));
}

TEST(CompareTensors, HalfOfTheToleranceRuleNeedsTheOtherHalf) {
  CompareOptions bad;
  bad.rtol = 0.1;
  EXPECT_THROW(compare_tensors(at::zeros({1}), at::zeros({1}), bad), c10dtest::ConfigError);
}

}  // namespace
