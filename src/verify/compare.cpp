#include "c10dtest/compare.hpp"

#include <cmath>
#include <sstream>

#include "c10dtest/error.hpp"
#include "common/text.hpp"
#include "scan.hpp"

namespace c10dtest {

CompareOptions torch_allclose(double rtol, double atol, bool equal_nan) {
  CompareOptions o;
  o.rtol = rtol;
  o.atol = atol;
  o.equal_nan = equal_nan;
  o.rule = CloseRule::kTorchAllclose;
  return o;
}

std::pair<double, double> default_tolerances(at::ScalarType dtype, CloseRule rule) {
  if (rule == CloseRule::kTorchAllclose) return {1e-5, 1e-8};
  switch (dtype) {
    case at::kHalf: return {1e-3, 1e-5};
    case at::kBFloat16: return {1.6e-2, 1e-5};
    case at::kFloat: return {1.3e-6, 1e-5};
    case at::kDouble: return {1e-7, 1e-7};
    case at::kComplexHalf: return {1e-3, 1e-5};
    case at::kComplexFloat: return {1.3e-6, 1e-5};
    case at::kComplexDouble: return {1e-7, 1e-7};
    default: return {0.0, 0.0};
  }
}

namespace {

std::string where(const CompareContext& c, const at::Tensor& actual) {
  std::ostringstream os;
  os << (c.key.empty() ? std::string("tensor") : "key '" + c.key + "'") << " (";
  if (c.rank >= 0) os << "rank " << c.rank << ", ";
  if (!c.offsets.empty()) os << "offsets " << detail::shape_text(c.offsets) << ", ";
  os << "shape " << detail::shape_text(actual.sizes()) << ", " << c10::toString(actual.scalar_type())
     << ")";
  return os.str();
}

}  // namespace

::testing::AssertionResult compare_tensors(const at::Tensor& expected, const at::Tensor& actual,
                                           const CompareOptions& options,
                                           const CompareContext& context) {
  if (!expected.defined() || !actual.defined()) {
    return ::testing::AssertionFailure()
           << (context.key.empty() ? "tensor" : "key '" + context.key + "'") << ": "
           << (expected.defined() ? "actual" : "expected") << " tensor is undefined";
  }
  if (expected.sizes() != actual.sizes()) {
    return ::testing::AssertionFailure()
           << where(context, actual) << ": shape " << detail::shape_text(actual.sizes())
           << " vs expected " << detail::shape_text(expected.sizes());
  }
  if (options.check_dtype && expected.scalar_type() != actual.scalar_type()) {
    return ::testing::AssertionFailure()
           << where(context, actual) << ": dtype " << c10::toString(actual.scalar_type())
           << " vs expected " << c10::toString(expected.scalar_type());
  }
  if (options.rtol.has_value() != options.atol.has_value()) {
    throw ConfigError("compare_tensors: set both rtol and atol, or neither");
  }
  const auto defaults = default_tolerances(expected.scalar_type(), options.rule);
  const detail::ScanTolerance tol{options.rtol.value_or(defaults.first),
                                  options.atol.value_or(defaults.second), options.equal_nan,
                                  options.rule == CloseRule::kTorchAllclose};
  const detail::MismatchStats stats =
      detail::scan(expected.detach(), actual.detach(), tol, context.offsets);
  if (stats.bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << where(context, actual) << ": " << detail::describe(stats) << "; "
         << detail::tolerance_text(tol);
}

}  // namespace c10dtest
