// The comparison helpers of compare.h checked against their own rules: expect_close_to_scale
// passes within rel * max |ref| + atol and fails outside it, compares an all-zero reference
// exactly (or within the atol a test states), fails on a NaN or an infinity in the reference or in
// the result, and nan_filled outputs fail a comparison until they are written.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "tests/util/compare.h"

using namespace sae;
using sae::testing::expect_close_to_scale;
using sae::testing::nan_filled;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// The failures `check` reports, joined (empty when it passes), without failing this test.
std::string failures_of(const std::function<void()>& check) {
  ::testing::TestPartResultArray results;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &results);
    check();
  }
  std::string all;
  for (int i = 0; i < results.size(); ++i) all += std::string(results.GetTestPartResult(i).message()) + "\n";
  return all;
}

Tensor vec(std::vector<double> v, DType dtype = DType::F64) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector(v, Shape{n}, dtype);
}

}  // namespace

TEST(Compare, CloseToScaleHoldsItsBound) {
  // Scale 4: rel 1e-3 allows 4e-3.
  const Tensor ref = vec({4.0, -1.0, 0.5});
  EXPECT_EQ(failures_of([&] { expect_close_to_scale(vec({4.0, -1.0039, 0.5}), ref, 1e-3, "inside"); }), "");
  EXPECT_NE(failures_of([&] { expect_close_to_scale(vec({4.0, -1.0041, 0.5}), ref, 1e-3, "outside"); }), "");
  EXPECT_EQ(failures_of([&] { expect_close_to_scale(vec({4.0, -1.0041, 0.5}), ref, 1e-3, "atol", 2e-4); }), "");
  EXPECT_NE(failures_of([&] { expect_close_to_scale(vec({4.0, kNaN, 0.5}), ref, 1e-3, "NaN result"); }), "");
  EXPECT_NE(failures_of([&] { expect_close_to_scale(vec({4.0, kInf, 0.5}), ref, 1.0, "infinite result"); }), "");
}

TEST(Compare, AllZeroReferenceIsComparedExactly) {
  const Tensor zeros = vec({0.0, 0.0, -0.0});
  EXPECT_EQ(failures_of([&] { expect_close_to_scale(vec({0.0, -0.0, 0.0}), zeros, 1e-5, "zeros"); }), "");
  const std::string tiny = failures_of([&] { expect_close_to_scale(vec({0.0, 1e-300, 0.0}), zeros, 1e-5, "tiny"); });
  EXPECT_NE(tiny.find("the reference is all zeros"), std::string::npos) << tiny;
  // An absolute tolerance the test states.
  EXPECT_EQ(failures_of([&] { expect_close_to_scale(vec({0.0, 1e-13, 0.0}), zeros, 1e-5, "atol", 1e-12); }), "");
  EXPECT_NE(failures_of([&] { expect_close_to_scale(vec({0.0, 2e-12, 0.0}), zeros, 1e-5, "atol", 1e-12); }), "");
  EXPECT_NE(failures_of([&] { expect_close_to_scale(vec({0.0, kNaN, 0.0}), zeros, 1e-5, "NaN", 1.0); }), "");
  // Empty tensors: nothing to compare.
  EXPECT_EQ(failures_of([&] { expect_close_to_scale(vec({}), vec({}), 1e-5, "empty"); }), "");
}

TEST(Compare, NonFiniteReferenceIsFlagged) {
  for (double bad : {kNaN, kInf, -kInf}) {
    const Tensor ref = vec({1.0, bad, 2.0});
    // Whatever the result holds there, even the same value.
    for (double got : {0.0, bad}) {
      const std::string f = failures_of([&] { expect_close_to_scale(vec({1.0, got, 2.0}), ref, 1e-3, "ref"); });
      EXPECT_NE(f.find("reference values are not finite"), std::string::npos) << bad << " " << got << ": " << f;
    }
  }
}

TEST(Compare, NanFilledOutputFailsUntilWritten) {
  for (DType dtype : {DType::F32, DType::F64}) {
    Tensor out = nan_filled(Shape{2, 3}, dtype);
    EXPECT_EQ(out.dtype(), dtype);
    const Tensor want = Tensor::full(Shape{2, 3}, 0.0, dtype);
    EXPECT_NE(failures_of([&] { expect_close_to_scale(out, want, 1e-5, "unwritten"); }), "");
    fill_(out, 0.0);
    EXPECT_EQ(failures_of([&] { expect_close_to_scale(out, want, 1e-5, "written"); }), "");
  }
}

TEST(Compare, WorstErrorTurnsANonFiniteErrorIntoInfinity) {
  // std::max(worst, NaN) keeps worst: a NaN result passed a `worst < tol` check.
  using sae::testing::worst_error;
  EXPECT_EQ(worst_error(0.5, 0.25), 0.5);
  EXPECT_EQ(worst_error(0.25, 0.5), 0.5);
  EXPECT_EQ(worst_error(0.0, std::nan("")), INFINITY);
  EXPECT_EQ(worst_error(0.0, -INFINITY), INFINITY);
  EXPECT_EQ(worst_error(worst_error(0.0, std::nan("")), 0.1), INFINITY);  // and it stays so
}
