#include "c10dtest/compare.hpp"

#include <cmath>
#include <sstream>

#include "c10dtest/error.hpp"
#include "common/text.hpp"

namespace c10dtest {

std::pair<double, double> default_tolerances(at::ScalarType dtype) {
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

// Global index of flat element `flat` of a tensor of `shape` placed at `offsets`.
std::vector<std::int64_t> global_index(std::int64_t flat, at::IntArrayRef shape,
                                       const std::vector<std::int64_t>& offsets) {
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  for (std::size_t d = 0; d < idx.size() && d < offsets.size(); ++d) idx[d] += offsets[d];
  return idx;
}

std::string value_text(const at::Tensor& flat, std::int64_t i) {
  std::ostringstream os;
  os.precision(9);
  const at::Tensor v = flat[i];
  if (v.is_complex()) {
    const auto c = v.item<c10::complex<double>>();
    os << c.real() << (c.imag() < 0 ? "" : "+") << c.imag() << "j";
  } else if (v.scalar_type() == at::kBool) {
    os << (v.item<bool>() ? "true" : "false");
  } else if (at::isIntegralType(v.scalar_type(), /*includeBool=*/false)) {
    os << v.item<std::int64_t>();
  } else {
    os << v.item<double>();
  }
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
  const auto defaults = default_tolerances(expected.scalar_type());
  const double rtol = options.rtol.value_or(defaults.first);
  const double atol = options.atol.value_or(defaults.second);

  const at::Tensor e = expected.detach().cpu().reshape({-1});
  const at::Tensor a = actual.detach().cpu().reshape({-1});
  const bool exact_kind = !at::isFloatingType(e.scalar_type()) && !e.is_complex() &&
                          !at::isFloatingType(a.scalar_type()) && !a.is_complex();
  at::Tensor bad;
  at::Tensor abs_diff;
  at::Tensor rel_diff;
  if (exact_kind && rtol == 0 && atol == 0) {
    bad = e.scalar_type() == a.scalar_type() ? at::ne(e, a) : at::ne(e.to(at::kLong), a.to(at::kLong));
    abs_diff = (e.to(at::kDouble) - a.to(at::kDouble)).abs();
    rel_diff = abs_diff / e.to(at::kDouble).abs();
  } else {
    const auto wide = e.is_complex() || a.is_complex() ? at::kComplexDouble : at::kDouble;
    const at::Tensor ew = e.to(wide);
    const at::Tensor aw = a.to(wide);
    abs_diff = (ew - aw).abs();
    rel_diff = abs_diff / ew.abs();
    // Non-finite values are close only when identical (inf vs -inf would pass the formula).
    at::Tensor ok = (abs_diff <= atol + rtol * ew.abs()) & at::isfinite(ew) & at::isfinite(aw);
    ok = ok | (ew == aw);
    const at::Tensor both_nan = at::isnan(ew) & at::isnan(aw);
    if (options.equal_nan) ok = ok | both_nan;
    bad = ~ok;
  }
  const std::int64_t n_bad = bad.sum().item<std::int64_t>();
  if (n_bad == 0) return ::testing::AssertionSuccess();

  const at::Tensor finite_abs = at::where(bad, abs_diff.nan_to_num(0, 0, 0), at::zeros_like(abs_diff));
  const std::int64_t worst = finite_abs.argmax().item<std::int64_t>();
  const std::int64_t first = bad.nonzero()[0][0].item<std::int64_t>();
  const double max_abs = abs_diff[worst].item<double>();
  const at::Tensor rel_bad = at::where(bad, rel_diff.nan_to_num(0, INFINITY, 0), at::zeros_like(rel_diff));
  const double max_rel = rel_bad.max().item<double>();
  std::ostringstream os;
  os.precision(6);
  os << where(context, actual) << ": " << n_bad << " of " << e.numel() << " elements differ ("
     << 100.0 * static_cast<double>(n_bad) / static_cast<double>(e.numel()) << "%)"
     << "; first at " << detail::shape_text(global_index(first, actual.sizes(), context.offsets))
     << " (expected " << value_text(e, first) << ", got " << value_text(a, first) << ")"
     << "; max abs diff " << max_abs << " at "
     << detail::shape_text(global_index(worst, actual.sizes(), context.offsets))
     << " (expected " << value_text(e, worst) << ", got " << value_text(a, worst) << ")"
     << "; max rel diff " << max_rel << "; allowed: atol " << atol << " + rtol " << rtol
     << " * |expected|" << (options.equal_nan ? ", NaN == NaN" : "");
  return ::testing::AssertionFailure() << os.str();
}

}  // namespace c10dtest
