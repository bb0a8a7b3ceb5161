#include "scan.hpp"

#include <c10/core/GradMode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "common/tensor.hpp"
#include "common/text.hpp"

namespace c10dtest::detail {

namespace {

constexpr std::int64_t kBlock = 1 << 20;  // elements per block (copies are at most this big)

bool index_less(const std::vector<std::int64_t>& a, const std::vector<std::int64_t>& b) {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
}

// NaN and infinities as Python prints them ("nan", "inf", "-inf"), whatever the platform.
std::string number_text(double v, int precision = 9) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream os;
  os.precision(precision);
  os << v;
  return os.str();
}

template <typename T>
std::string value_text(T v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_integral_v<T>) {
    return std::to_string(static_cast<long long>(v));
  } else {
    return number_text(static_cast<double>(v));
  }
}

std::string complex_text(c10::complex<double> c) {
  std::ostringstream os;
  os.precision(9);
  os << c.real() << (c.imag() < 0 ? "" : "+") << c.imag() << "j";
  return os.str();
}

// Global index of flat element `flat` of a tensor of `shape` placed at `offsets`.
std::vector<std::int64_t> global_index(std::int64_t flat, at::IntArrayRef shape,
                                       const std::vector<std::int64_t>& offsets) {
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] == 0 ? 0 : flat % shape[d];
    flat = shape[d] == 0 ? 0 : flat / shape[d];
  }
  for (std::size_t d = 0; d < idx.size() && d < offsets.size(); ++d) idx[d] += offsets[d];
  return idx;
}

struct Where {
  at::IntArrayRef shape;
  const std::vector<std::int64_t>* offsets;
};

// Records mismatch `flat` (flat index in the piece) with difference `diff` (NaN when a NaN is
// involved) against reference value `ref`; `nonfinite` says whether a value is NaN (2) or
// infinite (1).
void record(MismatchStats& s, const Where& w, std::int64_t flat, double diff, double ref,
            int nonfinite, const std::string& expected, const std::string& actual) {
  const int cls = std::isnan(diff) ? 2 : (std::isinf(diff) ? 1 : 0);
  if (s.bad == 0) {
    s.first = {global_index(flat, w.shape, *w.offsets), expected, actual};
  }
  if (s.bad == 0 || cls > s.worst_class || (cls == s.worst_class && diff > s.worst_abs)) {
    s.worst = {global_index(flat, w.shape, *w.offsets), expected, actual};
    s.worst_class = cls;
    s.worst_abs = diff;
  }
  if (!std::isnan(diff)) {
    const double rel = ref == 0 ? (diff == 0 ? 0 : INFINITY) : diff / std::abs(ref);
    if (!std::isnan(rel) && rel > s.max_rel) s.max_rel = rel;
  }
  s.nan_bad += nonfinite == 2 ? 1 : 0;
  s.inf_bad += nonfinite == 1 ? 1 : 0;
  ++s.bad;
}

int nonfinite_class(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return 2;
  return std::isinf(a) || std::isinf(b) ? 1 : 0;
}

template <typename T>
constexpr bool kFloatLike = std::is_floating_point_v<T> || std::is_same_v<T, c10::Half> ||
                            std::is_same_v<T, c10::BFloat16>;

// Whether any a[i] != e[i] (NaN included). Built for AVX2 as well where the compiler can
// dispatch at run time, as this loop carries most of a verification's time.
// Not under ThreadSanitizer: the clones' resolver runs while the dynamic loader relocates the
// binary, before the sanitizer's runtime is set up, and its instrumented entry crashed every
// binary that links this file (SIGSEGV before main).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__)
#define C10DTEST_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define C10DTEST_VECTOR_CLONES
#endif
#define C10DTEST_ANY_UNEQUAL(T)                                                       \
  C10DTEST_VECTOR_CLONES bool any_unequal(const T* a, const T* e, std::int64_t n) { \
    int unequal = 0;                                                                \
    for (std::int64_t i = 0; i < n; ++i) unequal |= static_cast<int>(!(a[i] == e[i])); \
    return unequal != 0;                                                            \
  }
C10DTEST_ANY_UNEQUAL(float)
C10DTEST_ANY_UNEQUAL(double)
C10DTEST_ANY_UNEQUAL(std::int8_t)
C10DTEST_ANY_UNEQUAL(std::uint8_t)
C10DTEST_ANY_UNEQUAL(std::int16_t)
C10DTEST_ANY_UNEQUAL(std::int32_t)
C10DTEST_ANY_UNEQUAL(std::int64_t)
C10DTEST_ANY_UNEQUAL(bool)
#undef C10DTEST_ANY_UNEQUAL

// The precision comparisons run in: float for float32 and narrower (as torch.isclose and
// assert_close do), double for double and for integers compared with a tolerance.
template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double> || !kFloatLike<T>, double, float>;

// |a - e| <= atol + rtol * |e|, identical values (infinities included) always close, a NaN only
// close to a NaN with equal_nan.
template <typename T>
inline bool close(T a, T e, Acc<T> atol, Acc<T> rtol, bool equal_nan, bool exact) {
  if constexpr (!kFloatLike<T>) {
    if (exact) return a == e;
  }
  const Acc<T> x = static_cast<Acc<T>>(a);
  const Acc<T> y = static_cast<Acc<T>>(e);
  const Acc<T> ay = std::abs(y);
  const Acc<T> diff = std::abs(x - y);
  return (x == y) | ((diff <= atol + rtol * ay) & (ay < std::numeric_limits<Acc<T>>::infinity())) |
         (equal_nan & (x != x) & (y != y));
}

// torch.allclose(expected, actual)'s rule, computed as PyTorch 2.x computes it (aten's
// isclose, with self = expected and other = actual, the order of PyTorch's
// VerifyStateDictMixin._compare_tensor): equal values are close; else the allowed error
// atol + |rtol * actual| and the actual error |expected - actual| are computed in the dtype
// (bfloat16 and half: each operation in float, rounded to the dtype, as ATen's CPU kernels do),
// integers and bool in float32 (the default dtype), and the actual error must be finite and at
// most the allowed one. Note the tolerance is relative to `actual`, as in PyTorch.
template <typename T>
inline bool close_torch(T a, T e, double atol, double rtol, bool equal_nan) {
  if constexpr (std::is_floating_point_v<T>) {
    // float32 and float64: in the dtype (for float32, atol and rtol as float, as ATen's kernels
    // take a Python number).
    if (a == e || (equal_nan && a != a && e != e)) return true;
    const T allowed = static_cast<T>(atol) + std::abs(static_cast<T>(rtol) * a);
    const T actual = std::abs(e - a);
    return std::isfinite(actual) && actual <= allowed;
  } else if constexpr (kFloatLike<T>) {
    // bfloat16 and half: each operation in float, rounded to the dtype.
    const float x = static_cast<float>(a);
    const float y = static_cast<float>(e);
    if (x == y || (equal_nan && x != x && y != y)) return true;
    const float product = static_cast<float>(T(static_cast<float>(rtol) * x));
    const float allowed = static_cast<float>(T(static_cast<float>(atol) + std::abs(product)));
    const float actual = std::abs(static_cast<float>(T(y - x)));
    return std::isfinite(actual) && actual <= allowed;
  } else {
    // Integers and bool: in float32.
    if (a == e) return true;
    const float x = static_cast<float>(a);
    const float y = static_cast<float>(e);
    const float allowed = static_cast<float>(atol) + std::abs(static_cast<float>(rtol) * x);
    const float actual = std::abs(y - x);
    return std::isfinite(actual) && actual <= allowed;
  }
}

// One block under a closeness rule `is_close(actual, expected)`: counts the elements, and
// records the ones that are not close.
template <typename T, typename Close>
void scan_block_with(const T* e, const T* a, std::int64_t n, std::int64_t base, const Where& w,
                     MismatchStats& s, Close is_close) {
  s.checked += n;
  // Most verified data is bit-for-bit equal: one cheap vectorised pass settles that (a NaN is
  // unequal to itself, so NaNs take the full rule below).
  if constexpr (std::is_arithmetic_v<T>) {
    if (!any_unequal(a, e, n)) return;
  }
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < n; ++i) bad += is_close(a[i], e[i]) ? 0 : 1;
  if (bad == 0) return;
  for (std::int64_t i = 0; i < n; ++i) {
    if (is_close(a[i], e[i])) continue;
    const double x = static_cast<double>(a[i]);
    const double y = static_cast<double>(e[i]);
    record(s, w, base + i, std::abs(x - y), y, nonfinite_class(x, y), value_text(e[i]),
           value_text(a[i]));
  }
}

template <typename T>
void scan_block(const T* e, const T* a, std::int64_t n, std::int64_t base, const ScanTolerance& t,
                const Where& w, MismatchStats& s) {
  if (t.torch_allclose) {
    return scan_block_with(e, a, n, base, w, s, [&t](T x, T y) {
      return close_torch(x, y, t.atol, t.rtol, t.equal_nan);
    });
  }
  const bool exact = !kFloatLike<T> && t.rtol == 0 && t.atol == 0;
  const auto atol = static_cast<Acc<T>>(t.atol);
  const auto rtol = static_cast<Acc<T>>(t.rtol);
  const bool equal_nan = t.equal_nan;
  scan_block_with(e, a, n, base, w, s, [=](T x, T y) {
    return close(x, y, atol, rtol, equal_nan, exact);
  });
}

// Complex tensors: the same rule on complex doubles, through ATen (blocks are small).
void scan_complex_block(const at::Tensor& e, const at::Tensor& a, std::int64_t base,
                        const ScanTolerance& t, const Where& w, MismatchStats& s) {
  const at::Tensor ew = e.to(at::kComplexDouble);
  const at::Tensor aw = a.to(at::kComplexDouble);
  const at::Tensor diff = (ew - aw).abs();
  // torch.allclose's rule: relative to the actual value, the difference finite (computed in
  // complex double here, not in the dtype).
  at::Tensor ok = t.torch_allclose
                      ? (diff <= t.atol + t.rtol * aw.abs()) & at::isfinite(diff)
                      : (diff <= t.atol + t.rtol * ew.abs()) & at::isfinite(ew) & at::isfinite(aw);
  ok = ok | (ew == aw);
  if (t.equal_nan) ok = ok | (at::isnan(ew) & at::isnan(aw));
  s.checked += e.numel();
  const at::Tensor bad_idx = (~ok).nonzero();
  if (bad_idx.numel() == 0) return;
  const auto* ep = ew.data_ptr<c10::complex<double>>();
  const auto* ap = aw.data_ptr<c10::complex<double>>();
  const auto* dp = diff.data_ptr<double>();
  for (std::int64_t k = 0; k < bad_idx.size(0); ++k) {
    const std::int64_t i = bad_idx[k][0].item<std::int64_t>();
    // |e| by hand: std::abs(c10::complex) moves out of namespace std in newer LibTorch.
    const double ea = std::hypot(ep[i].real(), ep[i].imag());
    record(s, w, base + i, dp[i], ea, nonfinite_class(ea, std::hypot(ap[i].real(), ap[i].imag())),
           complex_text(ep[i]), complex_text(ap[i]));
  }
}

void scan_flat(const at::Tensor& e, const at::Tensor& a, std::int64_t base, const ScanTolerance& t,
               const Where& w, MismatchStats& s) {
  at::Tensor ec = e;
  at::Tensor ac = a;
  if (ec.scalar_type() != ac.scalar_type()) {
    const bool complex = ec.is_complex() || ac.is_complex();
    const bool integral = !at::isFloatingType(ec.scalar_type()) &&
                          !at::isFloatingType(ac.scalar_type()) && !complex;
    const auto common = complex ? at::kComplexDouble : (integral ? at::kLong : at::kDouble);
    ec = ec.to(common);
    ac = ac.to(common);
  }
  if (ec.is_complex()) return scan_complex_block(ec, ac, base, t, w, s);
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, ec.scalar_type(), "scan", [&] {
    scan_block<scalar_t>(ec.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(), ec.numel(), base, t,
                         w, s);
  });
}

// The common case, straight on the data (no tensor operations per block): `n` elements of
// `actual`'s type at `e` and at actual's data.
void scan_raw(const void* e, const at::Tensor& actual, std::int64_t n, const ScanTolerance& tol,
              const Where& w, MismatchStats& s) {
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, actual.scalar_type(), "scan",
                             [&] {
                               const auto* ep = static_cast<const scalar_t*>(e);
                               const scalar_t* ap = actual.data_ptr<scalar_t>();
                               for (std::int64_t base = 0; base < n; base += kBlock) {
                                 scan_block<scalar_t>(ep + base, ap + base,
                                                      std::min(kBlock, n - base), base, tol, w,
                                                      s);
                               }
                             });
}

bool raw_ok(const at::Tensor& expected, const at::Tensor& actual) {
  return expected.is_contiguous() && actual.is_contiguous() && expected.device().is_cpu() &&
         actual.device().is_cpu() && expected.scalar_type() == actual.scalar_type() &&
         !actual.is_complex();
}

}  // namespace

bool MismatchStats::merge(const MismatchStats& o) {
  checked += o.checked;
  if (o.bad == 0) return false;
  const bool takes_first = bad == 0 || index_less(o.first.index, first.index);
  if (takes_first) first = o.first;
  const bool worse = o.worst_class > worst_class ||
                     (o.worst_class == worst_class &&
                      (o.worst_abs > worst_abs ||
                       (o.worst_abs == worst_abs && index_less(o.worst.index, worst.index))));
  if (bad == 0 || worse) {
    worst = o.worst;
    worst_class = o.worst_class;
    worst_abs = o.worst_abs;
  }
  if (o.max_rel > max_rel) max_rel = o.max_rel;
  bad += o.bad;
  nan_bad += o.nan_bad;
  inf_bad += o.inf_bad;
  return takes_first;
}

MismatchStats scan(const at::Tensor& expected, const at::Tensor& actual, const ScanTolerance& tol,
                   const std::vector<std::int64_t>& offsets) {
  MismatchStats s;
  const Where w{actual.sizes(), &offsets};
  const std::int64_t n = actual.numel();
  if (n == 0) return s;
  if (raw_ok(expected, actual)) {
    scan_raw(expected.data_ptr(), actual, n, tol, w, s);
    return s;
  }
  // Views and copies below need no autograd history (parameters may require grad).
  const c10::NoGradGuard no_grad;
  const bool flat_ok = expected.is_contiguous() && actual.is_contiguous() &&
                       expected.device().is_cpu() && actual.device().is_cpu();
  if (flat_ok) {
    const at::Tensor e = expected.reshape({-1});
    const at::Tensor a = actual.reshape({-1});
    for (std::int64_t base = 0; base < n; base += kBlock) {
      const std::int64_t len = std::min(kBlock, n - base);
      scan_flat(e.narrow(0, base, len), a.narrow(0, base, len), base, tol, w, s);
    }
    return s;
  }
  // Strided or on another device: whole rows (of dim 0) at a time, copied to contiguous CPU.
  const at::Tensor e = expected.dim() == 0 ? expected.reshape({1}) : expected;
  const at::Tensor a = actual.dim() == 0 ? actual.reshape({1}) : actual;
  const std::int64_t rows = e.size(0);
  const std::int64_t row_numel = n / rows;
  const std::int64_t step = std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(1, row_numel));
  for (std::int64_t r = 0; r < rows; r += step) {
    const std::int64_t k = std::min(step, rows - r);
    const at::Tensor eb = e.narrow(0, r, k).cpu().contiguous().reshape({-1});
    const at::Tensor ab = a.narrow(0, r, k).cpu().contiguous().reshape({-1});
    scan_flat(eb, ab, r * row_numel, tol, w, s);
  }
  return s;
}

MismatchStats scan_piece(const at::Tensor& whole, const at::Tensor& actual,
                         const ScanTolerance& tol, const std::vector<std::int64_t>& offsets) {
  const auto shape = whole.sizes();
  const auto sizes = actual.sizes();
  if (offsets.size() == shape.size() && sizes.size() == shape.size() && raw_ok(whole, actual)) {
    // The piece is one run of `whole`'s memory when every dim after the last partial one is
    // whole and every dim before it has size 1: then no view is needed (Shard(0) pieces).
    std::size_t partial = 0;  // one past the last partial dim
    for (std::size_t d = 0; d < shape.size(); ++d) {
      if (offsets[d] != 0 || sizes[d] != shape[d]) partial = d + 1;
    }
    bool run = true;
    std::int64_t start = 0;
    for (std::size_t d = 0; d < shape.size(); ++d) {
      if (d + 1 < partial && sizes[d] != 1) run = false;
      start += offsets[d] * whole.strides()[d];
    }
    if (run) {
      MismatchStats s;
      const std::int64_t n = actual.numel();
      if (n == 0) return s;
      const auto* base = static_cast<const char*>(whole.data_ptr()) +
                         start * static_cast<std::int64_t>(whole.element_size());
      scan_raw(base, actual, n, tol, Where{sizes, &offsets}, s);
      return s;
    }
  }
  return scan(slice_block(whole, sizes, offsets), actual, tol, offsets);
}

std::string tolerance_text(const ScanTolerance& t) {
  std::ostringstream os;
  os.precision(6);
  os << "allowed: atol " << t.atol << " + rtol " << t.rtol << " * |expected|"
     << (t.torch_allclose ? " (torch.allclose's rule)" : "") << (t.equal_nan ? ", NaN == NaN" : "");
  return os.str();
}

std::string describe(const MismatchStats& s, const std::vector<MismatchStats>& copies) {
  std::ostringstream os;
  os.precision(6);
  auto percent = [&](std::int64_t n) {
    return 100.0 * static_cast<double>(n) / static_cast<double>(std::max<std::int64_t>(1, s.checked));
  };
  auto nonfinite = [](const MismatchStats& c) {
    if (c.nan_bad == 0 && c.inf_bad == 0) return std::string();
    std::string out = ": ";
    if (c.nan_bad > 0) out += std::to_string(c.nan_bad) + " with NaN";
    if (c.inf_bad > 0) out += (c.nan_bad > 0 ? ", " : "") + std::to_string(c.inf_bad) + " with an infinity";
    return out;
  };
  if (copies.size() > 1) {
    const bool alike = std::all_of(copies.begin(), copies.end(), [&](const MismatchStats& c) {
      return c.bad == copies[0].bad && c.nan_bad == copies[0].nan_bad &&
             c.inf_bad == copies[0].inf_bad;
    });
    if (alike) {
      os << copies[0].bad << " of " << s.checked << " elements differ (" << percent(copies[0].bad)
         << "%" << nonfinite(copies[0]) << ")";
    } else {
      const auto [lo, hi] = std::minmax_element(
          copies.begin(), copies.end(),
          [](const MismatchStats& a, const MismatchStats& b) { return a.bad < b.bad; });
      if (lo->bad != hi->bad) os << "between " << lo->bad << " and ";
      os << hi->bad << " of " << s.checked << " elements differ ("
         << (lo->bad != hi->bad ? "up to " : "") << percent(hi->bad) << "%)";
    }
    os << " in each of " << copies.size() << " copies";
  } else {
    os << s.bad << " of " << s.checked << " elements differ (" << percent(s.bad) << "%"
       << nonfinite(s) << ")";
  }
  os << "; first at " << shape_text(s.first.index) << " (expected " << s.first.expected
     << ", got " << s.first.actual << "); max abs diff " << number_text(s.worst_abs, 6) << " at "
     << shape_text(s.worst.index) << " (expected " << s.worst.expected << ", got "
     << s.worst.actual << ")";
  // A NaN has no relative difference: said only when some mismatch is between numbers.
  if (s.nan_bad < s.bad) os << "; max rel diff " << number_text(s.max_rel, 6);
  return os.str();
}

}  // namespace c10dtest::detail
