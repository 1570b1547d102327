// Tensor comparisons shared by the tests: element-wise closeness with NaN/Inf rules, closeness
// relative to the reference's scale (for results of long sums in another order; an all-zero
// reference compared exactly), bitwise equality, NaN-filled outputs for kernels to overwrite, and
// the relative distance of two saved SAEs, one number relative to another. (Random inputs:
// random_inputs.h.)
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "tensor/ops.h"
#include "tests/util/random_inputs.h"

namespace sae::testing {

// The larger of a running worst error and a new one, where a NaN or inf error makes it +inf: a check
// `worst < tol` then fails (std::max(worst, NaN) is worst, so a NaN result passed unseen).
inline double worst_error(double worst, double error) {
  return std::isfinite(error) ? std::max(worst, error) : std::numeric_limits<double>::infinity();
}

struct Tolerance {
  double atol, rtol;
};
constexpr Tolerance kExact{0.0, 0.0};

// One number within `rel` of the reference's magnitude.
inline void expect_relative(double got, double want, double rel, const std::string& what) {
  EXPECT_LE(std::abs(got - want), rel * std::abs(want)) << what << ": got " << got << ", want " << want;
}

// |got - ref| <= atol + rtol * |ref| element by element; NaN must meet NaN and an infinity the same
// infinity. Reports the first few failures and their count.
inline void expect_close(const Tensor& got, const Tensor& ref, Tolerance tol, const std::string& what) {
  ASSERT_EQ(got.shape(), ref.shape()) << what;
  ASSERT_EQ(got.dtype(), ref.dtype()) << what;
  const std::vector<double> g = got.to_vector(), r = ref.to_vector();
  int64_t bad = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    bool ok;
    if (std::isnan(r[i]))
      ok = std::isnan(g[i]);
    else if (std::isinf(r[i]))
      ok = g[i] == r[i];
    else
      ok = std::abs(g[i] - r[i]) <= tol.atol + tol.rtol * std::abs(r[i]);  // false for a NaN g[i]
    if (!ok && ++bad <= 5) ADD_FAILURE() << what << ": index " << i << ": got " << g[i] << ", want " << r[i];
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << g.size() << " values differ";
}

// max |got - ref| <= rel * max |ref| + atol: for results of long sums whose rounding depends on the
// summation order (GEMMs, gradients). A reference of all zeros (or an empty one) has no scale: then
// every value must be exactly 0, or within the atol the test states. A NaN or an infinity in the
// reference is a failure (it would carry no information about got), and so is one in got.
inline void expect_close_to_scale(const Tensor& got, const Tensor& ref, double rel, const std::string& what,
                                  double atol = 0.0) {
  ASSERT_EQ(got.shape(), ref.shape()) << what;
  const std::vector<double> g = got.to_vector(), r = ref.to_vector();
  if (r.empty()) return;  // nothing to compare (an empty batch)
  double scale = 0.0, worst = 0.0;
  size_t worst_at = 0;
  int64_t non_finite = 0;
  size_t first_non_finite = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    if (std::isfinite(r[i]))
      scale = std::max(scale, std::abs(r[i]));
    else if (non_finite++ == 0)
      first_non_finite = i;
  }
  if (non_finite > 0)
    ADD_FAILURE() << what << ": " << non_finite << " of " << r.size() << " reference values are not finite (index "
                  << first_non_finite << ": " << r[first_non_finite] << ")";
  for (size_t i = 0; i < r.size(); ++i) {
    if (!std::isfinite(r[i])) continue;
    const double diff = std::isfinite(g[i]) ? std::abs(g[i] - r[i]) : INFINITY;
    if (diff > worst) worst = diff, worst_at = i;
  }
  if (scale == 0.0) {
    EXPECT_LE(worst, atol) << what << ": the reference is all zeros, so the result must be too (atol " << atol
                           << "); index " << worst_at << " is " << g[worst_at];
    return;
  }
  EXPECT_LE(worst, rel * scale + atol) << what << ": worst at index " << worst_at << ": got " << g[worst_at]
                                       << ", want " << r[worst_at] << " (max |want| " << scale << ")";
}

// A tensor of NaN, for the outputs a kernel must write: one it never writes fails the comparison.
inline Tensor nan_filled(const Shape& shape, DType dtype, Device device = Device::CPU) {
  return Tensor::full(shape, std::numeric_limits<double>::quiet_NaN(), dtype, device);
}

inline void expect_bitwise_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const Tensor g = got.to(Device::CPU), w = want.to(Device::CPU);
  EXPECT_EQ(std::memcmp(g.raw(), w.raw(), g.nbytes()), 0) << what;
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  return reduce(ReduceOp::max, abs(a.to(DType::F64) - b.to(DType::F64))).item();
}
inline double max_abs(const Tensor& a) { return reduce(ReduceOp::max, abs(a.to(DType::F64))).item(); }

// Each of the four tensors of two saved SAEs (DIR/sae_weights.safetensors) within relative
// Frobenius distance `rel` of the first's; prints the distances.
inline void expect_same_saved_weights(const std::string& dir_a, const std::string& dir_b, double rel) {
  SafetensorsFile fa = SafetensorsFile::open(dir_a + "/sae_weights.safetensors");
  SafetensorsFile fb = SafetensorsFile::open(dir_b + "/sae_weights.safetensors");
  for (const char* name : {"W_enc", "b_enc", "W_dec", "b_dec"}) {
    const std::vector<double> want = fa.read_f32(name).to_vector(), got = fb.read_f32(name).to_vector();
    ASSERT_EQ(got.size(), want.size()) << name;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      diff += (got[i] - want[i]) * (got[i] - want[i]);
      norm += want[i] * want[i];
    }
    EXPECT_GT(norm, 0.0) << name;
    EXPECT_LE(std::sqrt(diff), rel * std::sqrt(norm)) << name;
    std::printf("%s: relative distance %.2e\n", name, std::sqrt(diff / norm));
  }
}

}  // namespace sae::testing
