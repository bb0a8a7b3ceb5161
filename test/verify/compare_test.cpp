// compare_tensors: assert_close tolerances and diagnostics that name where and by how much.
#include "c10dtest/compare.hpp"
#include "c10dtest/error.hpp"
#include "c10dtest/verify.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>

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

// torch.allclose's rule (the PyTorch-compatibility preset): each case below is one where its
// verdict and assert_close's differ, so a rule that fell back to the defaults would fail here.
TEST(CompareTensors, TorchAllcloseRuleGivesPyTorchsVerdicts) {
  const CompareOptions torch = c10dtest::torch_allclose();
  EXPECT_EQ(c10dtest::default_tolerances(at::kBFloat16, c10dtest::CloseRule::kTorchAllclose),
            std::make_pair(1e-5, 1e-8));
  struct Case {
    const char* what;
    at::Tensor expected;
    at::Tensor actual;
    bool assert_close;  // the default rule's verdict
    bool allclose;      // torch.allclose(expected, actual)
  };
  const double big = 1099511627776.0;  // 2^40
  const std::vector<Case> cases{
      {"bfloat16, one ulp at 1", at::ones({1}, at::kBFloat16),
       at::full({1}, 1.0078125, at::kBFloat16), true, false},
      {"float32 near zero", at::zeros({1}), at::full({1}, 1e-6), true, false},
      {"large float64", at::full({1}, 1e10, at::kDouble), at::full({1}, 1e10 + 1e4, at::kDouble),
       false, true},
      {"large int64", at::full({1}, static_cast<std::int64_t>(big), at::kLong),
       at::full({1}, static_cast<std::int64_t>(big) + 1, at::kLong), false, true},
      // Relative to the actual value: 10.00005 is within 1e-8 + 1e-5 * 1000010.00005 but not
      // within 1e-8 + 1e-5 * 1e6.
      {"tolerance relative to actual", at::full({1}, 1e6, at::kDouble),
       at::full({1}, 1e6 + 10.00005, at::kDouble), false, true},
      {"bool", at::ones({1}, at::kBool), at::zeros({1}, at::kBool), false, false},
      {"opposite infinities", at::full({1}, INFINITY), at::full({1}, -INFINITY), false, false},
      {"equal infinities", at::full({1}, INFINITY), at::full({1}, INFINITY), true, true},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_EQ(static_cast<bool>(compare_tensors(c.expected, c.actual)), c.assert_close);
    EXPECT_EQ(static_cast<bool>(compare_tensors(c.expected, c.actual, torch)), c.allclose);
    // LibTorch's own allclose agrees (it is the rule's definition).
    EXPECT_EQ(at::allclose(c.expected, c.actual), c.allclose);
  }
  const auto r = compare_tensors(at::zeros({1}), at::full({1}, 1e-6), torch);
  EXPECT_NE(message_of(r).find("allowed: atol 1e-08 + rtol 1e-05 * |expected| (torch.allclose's "
                               "rule)"),
            std::string::npos)
      << message_of(r);
}

// The rule against LibTorch's own at::allclose on seeded random pairs near the tolerance's edge,
// every dtype it takes: the same verdict, element by element.
TEST(CompareTensors, TorchAllcloseRuleMatchesAtIscloseOnRandomEdges) {
  at::manual_seed(20261202);
  const CompareOptions torch = c10dtest::torch_allclose();
  for (const auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kLong, at::kInt,
                           at::kByte, at::kBool}) {
    SCOPED_TRACE(c10::toString(dtype));
    const std::int64_t n = 4000;
    // Magnitudes from 1e-9 to 1e9, differences around atol + rtol * |actual|.
    const at::Tensor magnitude = at::pow(10.0, at::rand({n}, at::kDouble) * 18 - 9);
    const at::Tensor sign = at::where(at::rand({n}) > 0.5, 1.0, -1.0).to(at::kDouble);
    at::Tensor expected = magnitude * sign;
    const at::Tensor edge = 1e-8 + 1e-5 * expected.abs();
    at::Tensor actual = expected + edge * (at::rand({n}, at::kDouble) * 2 - 1) * 1.5;
    if (dtype == at::kLong || dtype == at::kInt || dtype == at::kByte) {
      expected = (expected * 1e3).clamp(-1e9, 1e9);
      actual = expected + at::randint(-3, 4, {n}, at::kDouble);
    }
    if (dtype == at::kByte) {
      expected = expected.abs().remainder(256);
      actual = (expected + at::randint(-2, 3, {n}, at::kDouble)).clamp(0, 255);
    }
    if (dtype == at::kBool) {
      expected = at::rand({n}) > 0.5;
      actual = at::rand({n}) > 0.5;
    }
    const at::Tensor e = expected.to(dtype);
    const at::Tensor a = actual.to(dtype);
    const at::Tensor close = at::isclose(e, a);
    std::int64_t disagree = 0;
    std::int64_t near = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const bool mine = static_cast<bool>(compare_tensors(e[i], a[i], torch));
      const bool theirs = close[i].item<bool>();
      near += theirs ? 0 : 1;
      if (mine != theirs && disagree++ < 5) {
        ADD_FAILURE() << "element " << i << ": expected " << e[i].item<double>() << ", actual "
                      << a[i].item<double>() << ": at::isclose says " << theirs;
      }
    }
    EXPECT_EQ(disagree, 0);
    // The cases sit on the edge: both verdicts occur.
    EXPECT_GT(near, 0);
    EXPECT_LT(near, n);
  }
}

// PyTorch's own verdicts, recorded by scripts/torch-verdicts.py from real torch (the file's
// first line names the version): torch.allclose on one element of every dtype near the edge of
// its tolerance, and TestCase.assertEqual on pairs of Python numbers. The preset
// (VerifyOptions::like_pytorch) must give every one of them; the defaults need not, and how
// often they differ is printed (docs/api.md records it).
TEST(CompareTensors, LikePyTorchMatchesRecordedTorchVerdicts) {
  std::ifstream in(C10DTEST_TEST_DATA "/torch_verdicts.txt");
  ASSERT_TRUE(in) << "cannot read " C10DTEST_TEST_DATA "/torch_verdicts.txt";
  const std::map<std::string, at::ScalarType> dtypes{
      {"Float", at::kFloat}, {"Double", at::kDouble}, {"BFloat16", at::kBFloat16},
      {"Half", at::kHalf},   {"Long", at::kLong},     {"Int", at::kInt},
      {"Byte", at::kByte},   {"Bool", at::kBool}};
  auto tensor_of = [](const std::string& hex, at::ScalarType dtype) {
    at::Tensor t = at::empty({1}, dtype);
    auto* bytes = static_cast<unsigned char*>(t.data_ptr());
    EXPECT_EQ(hex.size(), 2 * t.element_size()) << hex;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
      bytes[i / 2] = static_cast<unsigned char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    }
    return t;
  };
  auto number_of = [](const std::string& text) -> c10dtest::StateValue {
    const auto colon = text.find(':');
    const std::string type = text.substr(0, colon);
    const std::string value = text.substr(colon + 1);
    if (type == "bool") return value == "True";
    if (type == "int") return static_cast<std::int64_t>(std::stoll(value));
    return std::strtod(value.c_str(), nullptr);  // hex floats, inf, nan
  };
  const c10dtest::VerifyOptions pytorch = c10dtest::VerifyOptions::like_pytorch();
  std::map<std::string, std::pair<int, int>> counts;  // kind -> (cases, default differs)
  int wrong = 0;
  std::string line;
  std::string version;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      if (version.empty()) version = line;
      continue;
    }
    std::istringstream fields(line);
    std::string kind;
    std::string a;
    std::string b;
    std::string c;
    int verdict = -1;
    fields >> kind >> a >> b;
    bool mine = false;
    bool by_default = false;
    std::string key;
    if (kind == "tensor") {
      fields >> c >> verdict;
      ASSERT_EQ(dtypes.count(a), 1u) << line;
      const at::Tensor expected = tensor_of(b, dtypes.at(a));
      const at::Tensor actual = tensor_of(c, dtypes.at(a));
      mine = static_cast<bool>(compare_tensors(expected, actual, pytorch.compare));
      by_default = static_cast<bool>(compare_tensors(expected, actual));
      key = "tensor " + a;
    } else {
      ASSERT_EQ(kind, "number") << line;
      fields >> verdict;
      c10dtest::StateDict ref;
      ref.insert("v", number_of(a));
      c10dtest::StateDict dist;
      dist.insert("v", number_of(b));
      mine = static_cast<bool>(c10dtest::verify_state_dict(ref, dist, pytorch));
      by_default = static_cast<bool>(c10dtest::verify_state_dict(ref, dist));
      key = "number";
    }
    ASSERT_TRUE(verdict == 0 || verdict == 1) << line;
    auto& [cases, differs] = counts[key];
    ++cases;
    differs += by_default != (verdict == 1) ? 1 : 0;
    if (mine != (verdict == 1) && wrong++ < 20) {
      ADD_FAILURE() << line << ": PyTorch says " << verdict << ", like_pytorch() says " << mine;
    }
  }
  EXPECT_EQ(wrong, 0);
  ASSERT_FALSE(counts.empty());
  std::cout << "recorded " << version << "\n";
  for (const auto& [key, n] : counts) {
    std::cout << "  " << key << ": " << n.first << " cases, the defaults give another verdict on "
              << n.second << "\n";
  }
}

}  // namespace
