// The SAE's loss and gradients: float64 gradcheck of rec + lambda * l1 w.r.t. all four
// parameters, and the fused SaeStep against the autograd reference (values and every gradient); the
// input-scale fold, in place only on tensors it is handed alone.
#include <gtest/gtest.h>


#include <cmath>

#include "tests/util/gradcheck.h"
#include "tests/util/standard_sae.h"
#include "sae/arch/sae_step.h"
#include "sae/arch/unit.h"
#include "tensor/ops.h"
#include "tests/util/compare.h"

using namespace sae;
using sae::testing::StandardSae;
using sae::testing::max_abs_diff;
using sae::testing::max_abs;
using sae::testing::fused_backward;
using sae::testing::fused_train_step;
using sae::testing::gradcheck;

namespace {
// A random SAE and batch whose encoder pre-activations all sit at least `margin` from 0, so the
// ReLU is differentiable everywhere finite differences probe. Biases are shifted so roughly
// `active_fraction` of the features fire.
struct Problem {
  Tensor x, W_enc, b_enc, W_dec, b_dec;
};

Problem make_problem(int64_t n, int64_t d, int64_t f, DType dtype, uint64_t seed, double margin = 1e-3) {
  Rng rng(seed);
  Problem p;
  p.x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng, DType::F64);
  p.W_enc = normal_tensor(Shape{d, f}, 0.0, 1.0 / std::sqrt(double(d)), rng, DType::F64);
  p.b_enc = normal_tensor(Shape{f}, -0.3, 0.3, rng, DType::F64);
  p.W_dec = normal_tensor(Shape{f, d}, 0.0, 1.0 / std::sqrt(double(f)), rng, DType::F64);
  p.b_dec = normal_tensor(Shape{d}, 0.0, 0.1, rng, DType::F64);
  // Nudge biases until no pre-activation is within margin of the kink.
  for (int attempt = 0; attempt < 100; ++attempt) {
    Tensor pre = add(matmul(p.x, p.W_enc), p.b_enc);
    if (reduce(ReduceOp::min, abs(pre)).item() >= margin) break;
    p.b_enc = add_scalar(p.b_enc, 1.7 * margin);
  }
  if (dtype == DType::F32)
    for (Tensor* t : {&p.x, &p.W_enc, &p.b_enc, &p.W_dec, &p.b_dec}) *t = t->to(DType::F32);
  return p;
}

}  // namespace

TEST(SaeModel, GradcheckFullLossAllFourParameters) {
  const double lambda = 0.7;
  Problem p = make_problem(6, 5, 9, DType::F64, 21);
  Tensor x = p.x;
  auto loss = [x, lambda](const std::vector<Variable>& v) {
    StandardSae sae(v[0].data(), v[1].data(), v[2].data(), v[3].data());
    // Use the given Variables (not copies) so gradients flow to them.
    sae.W_enc = v[0];
    sae.b_enc = v[1];
    sae.W_dec = v[2];
    sae.b_dec = v[3];
    return sae.loss(Variable(x), lambda).total;
  };
  EXPECT_LT(gradcheck(loss, {p.W_enc, p.b_enc, p.W_dec, p.b_dec}), 1e-7);
  // rec and l1 separately, so neither term can hide behind the other
  auto l1_only = [x](const std::vector<Variable>& v) {
    StandardSae sae(v[0].data(), v[1].data(), v[2].data(), v[3].data());
    sae.W_enc = v[0], sae.b_enc = v[1], sae.W_dec = v[2], sae.b_dec = v[3];
    return sae.loss(Variable(x), 0.0).l1;
  };
  EXPECT_LT(gradcheck(l1_only, {p.W_enc, p.b_enc, p.W_dec, p.b_dec}), 1e-7);
}

TEST(SaeModel, FreshInitIsPyTorchsLinearDefault) {
  // docs/contract.md: nn.Linear(d_in, F) and nn.Linear(F, d_in)'s defaults, weight and bias uniform
  // in +-1/sqrt(fan_in): W_enc, b_enc within 1/sqrt(d_in); W_dec, b_dec within 1/sqrt(F). Checked by
  // the bound, the largest value (near the bound for this many draws), the mean and the variance of
  // U(-b, b), b^2/3 (the arch tests only compared the units' init with this same function).
  const int64_t d = 64, f = 256;
  Rng rng(11);
  const SaeParams p = SaeParams::standard_init(d, f, rng);
  const struct {
    const char* name;
    const Tensor& t;
    double bound, least_max;
  } cases[] = {{"W_enc", p.W_enc, 1 / std::sqrt(double(d)), 0.999}, {"b_enc", p.b_enc, 1 / std::sqrt(double(d)), 0.97},
               {"W_dec", p.W_dec, 1 / std::sqrt(double(f)), 0.999}, {"b_dec", p.b_dec, 1 / std::sqrt(double(f)), 0.9}};
  for (const auto& c : cases) {
    const std::vector<double> v = c.t.to_vector();
    double largest = 0, mean = 0, square = 0;
    for (double x : v) largest = std::max(largest, std::abs(x)), mean += x / v.size(), square += x * x / v.size();
    const double n = double(v.size()), variance = c.bound * c.bound / 3;
    EXPECT_LE(largest, c.bound) << c.name;
    EXPECT_GE(largest, c.least_max * c.bound) << c.name;
    EXPECT_LT(std::abs(mean), 5 * std::sqrt(variance / n)) << c.name;  // 5 sigma
    // The variance of x^2 for U(-b, b) is 4 b^4 / 45: 5 sigma of the mean of n squares.
    EXPECT_LT(std::abs(square - variance), 5 * std::sqrt(4 * std::pow(c.bound, 4) / 45 / n)) << c.name;
  }
}

TEST(SaeModel, LossValuesByDefinition) {
  // rec and l1 recomputed element by element from the definitions in docs/contract.md §1.
  Problem p = make_problem(4, 3, 5, DType::F64, 5);
  StandardSae sae(p.W_enc, p.b_enc, p.W_dec, p.b_dec);
  auto loss = sae.loss(Variable(p.x), 2.0);
  auto x = p.x.to_vector(), we = p.W_enc.to_vector(), be = p.b_enc.to_vector(), wd = p.W_dec.to_vector(),
       bd = p.b_dec.to_vector();
  double rec = 0, l1 = 0;
  for (int t = 0; t < 4; ++t) {
    std::vector<double> f(5);
    for (int i = 0; i < 5; ++i) {
      double pre = be[i];
      for (int k = 0; k < 3; ++k) pre += x[t * 3 + k] * we[k * 5 + i];
      f[i] = std::max(pre, 0.0);
      double norm = 0;
      for (int k = 0; k < 3; ++k) norm += wd[i * 3 + k] * wd[i * 3 + k];
      l1 += f[i] * std::sqrt(norm);
    }
    for (int k = 0; k < 3; ++k) {
      double xh = bd[k];
      for (int i = 0; i < 5; ++i) xh += f[i] * wd[i * 3 + k];
      rec += (xh - x[t * 3 + k]) * (xh - x[t * 3 + k]);
    }
  }
  EXPECT_NEAR(loss.rec.data().item(), rec, 1e-12);
  EXPECT_NEAR(loss.l1.data().item(), l1, 1e-12);
  EXPECT_NEAR(loss.total.data().item(), rec + 2.0 * l1, 1e-12);
  EXPECT_GT(l1, 0.0);
}

namespace {
void compare_fused_with_autograd(int64_t n, int64_t d, int64_t f, DType dtype, double lambda, double tol,
                                 uint64_t seed) {
  Problem p = make_problem(n, d, f, dtype, seed, 0.0);
  StandardSae reference(p.W_enc.clone(), p.b_enc.clone(), p.W_dec.clone(), p.b_dec.clone());
  auto loss = reference.loss(Variable(p.x), lambda);
  loss.total.backward();

  StandardSae fused(p.W_enc.clone(), p.b_enc.clone(), p.W_dec.clone(), p.b_dec.clone());
  SaeStep step = sae::testing::standard_step(n + 3, d, f, dtype, Device::CPU);  // workspace larger than the batch on purpose
  // Poison the gradients: the step must overwrite them entirely.
  for (Variable& param : fused.parameters()) param.grad() = Tensor::full(param.shape(), NAN, dtype);
  StepSums sums = fused_backward(step, fused, p.x, lambda);

  const double rec = loss.rec.data().item(), l1 = loss.l1.data().item();
  EXPECT_NEAR(sums.rec, rec, tol * (1 + std::abs(rec)));
  EXPECT_NEAR(sums.l1, l1, tol * (1 + std::abs(l1)));
  EXPECT_NEAR(sums.loss, rec + lambda * l1, tol * (1 + std::abs(rec + lambda * l1)));
  Tensor f_ref = reference.encode(Variable(p.x)).data();
  EXPECT_DOUBLE_EQ(sums.active, reduce(ReduceOp::count_nonzero, f_ref).item());
  EXPECT_GT(sums.active, 0.0);
  EXPECT_LT(sums.active, double(n * f));
  EXPECT_LT(max_abs_diff(step.features(), f_ref), tol * (1 + max_abs(f_ref)));
  EXPECT_LT(max_abs_diff(step.feature_counts(), sum(sae::step(f_ref), 0)), 0.5);
  auto ref_params = reference.named_parameters(), fused_params = fused.named_parameters();
  for (size_t i = 0; i < ref_params.size(); ++i) {
    const Tensor& want = ref_params[i].second.grad();
    const Tensor& got = fused_params[i].second.grad();
    EXPECT_LT(max_abs_diff(got, want), tol * (1 + max_abs(want))) << ref_params[i].first;
  }
}
}  // namespace

TEST(SaeStep, FusedMatchesAutogradFloat64) {
  compare_fused_with_autograd(7, 6, 11, DType::F64, 0.5, 1e-12, 1);
  compare_fused_with_autograd(40, 16, 300, DType::F64, 3.0, 1e-12, 2);
  compare_fused_with_autograd(5, 8, 20, DType::F64, 0.0, 1e-12, 3);  // lambda = 0
}

TEST(SaeStep, FusedMatchesAutogradFloat32LargeEnoughToThread) {
  compare_fused_with_autograd(64, 48, 1200, DType::F32, 5.0, 2e-5, 4);
}

TEST(SaeStep, RejectsBadBatches) {
  Rng rng(1);
  StandardSae sae(4, 6, rng);
  SaeStep step = sae::testing::standard_step(8, 4, 6, DType::F32, Device::CPU);
  EXPECT_THROW(fused_backward(step, sae, Tensor::zeros(Shape{9, 4}), 1.0), Error);  // too many tokens
  EXPECT_THROW(fused_backward(step, sae, Tensor::zeros(Shape{3, 5}), 1.0), Error);  // wrong width
}

TEST(SaeParams, FoldInputScalesScalesInPlaceOnlyWhatItIsHandedAlone) {
  // fold_input_scales multiplies W_enc's rows by the input scale and divides W_dec's columns and
  // b_dec by the output scale. Given params to keep (a copy), it leaves them as they were; handed
  // params it may consume (moved in), it scales in place each tensor nothing else holds (no second
  // copy of a multi-GB weight at load) and copies any tensor another handle still shares.
  Rng rng(11);
  SaeParams p = SaeParams::standard_init(4, 6, rng);
  const std::vector<double> W_enc = p.W_enc.to_vector(), W_dec = p.W_dec.to_vector(), b_dec = p.b_dec.to_vector();
  const SaeParams kept = fold_input_scales(p, {2.5}, {0.5}, false);
  EXPECT_EQ(p.W_enc.to_vector(), W_enc);
  EXPECT_EQ(p.W_dec.to_vector(), W_dec);
  for (size_t i = 0; i < W_enc.size(); ++i) EXPECT_EQ(kept.W_enc.to_vector()[i], float(W_enc[i] * 2.5));
  for (size_t i = 0; i < W_dec.size(); ++i) EXPECT_EQ(kept.W_dec.to_vector()[i], float(W_dec[i] / 0.5));
  for (size_t i = 0; i < b_dec.size(); ++i) EXPECT_EQ(kept.b_dec.to_vector()[i], float(b_dec[i] / 0.5));
  const Tensor held = p.W_dec;  // another handle on W_dec
  const void* w_enc_bytes = p.W_enc.raw();
  const SaeParams moved = fold_input_scales(std::move(p), {2.5}, {0.5}, false);
  EXPECT_EQ(moved.W_enc.raw(), w_enc_bytes);  // scaled where it was
  EXPECT_FALSE(moved.W_dec.shares_storage(held));
  EXPECT_EQ(held.to_vector(), W_dec);  // the other handle's values are untouched
  EXPECT_EQ(max_abs_diff(moved.W_enc, kept.W_enc), 0.0);
  EXPECT_EQ(max_abs_diff(moved.W_dec, kept.W_dec), 0.0);
  EXPECT_EQ(max_abs_diff(moved.b_dec, kept.b_dec), 0.0);
}

TEST(SaeParams, FoldDictionaryNormsScalesEachLatentOrLeavesTheParamsAsTheyWere) {
  // Latent i's encoder column, bias and the unit's own [F] tensors times n_i, its decoder row over
  // n_i: in place where nothing else holds the bytes, a copy where another handle does. Factors that
  // do not fit the tensors are refused before anything is scaled.
  Rng rng(12);
  SaeParams p = SaeParams::standard_init(4, 6, rng);
  p.b_enc = uniform_tensor(Shape{6}, -1, 1, rng);
  p.own.push_back({"r_mag", uniform_tensor(Shape{6}, -1, 1, rng)});
  const std::vector<double> W_enc = p.W_enc.to_vector(), W_dec = p.W_dec.to_vector(), b_enc = p.b_enc.to_vector(),
                            r_mag = p.own[0].tensor.to_vector();
  const std::vector<double> norms = {0.5, 2.0, 1.5, 3.0, 0.25, 1.0};
  const void* w_enc_bytes = p.W_enc.raw();
  auto unchanged = [&](const std::string& what) {
    EXPECT_EQ(p.W_enc.to_vector(), W_enc) << what;
    EXPECT_EQ(p.W_dec.to_vector(), W_dec) << what;
    EXPECT_EQ(p.b_enc.to_vector(), b_enc) << what;
    EXPECT_EQ(p.own[0].tensor.to_vector(), r_mag) << what;
  };
  EXPECT_THROW(fold_dictionary_norms(p, {1.0, 2.0, 3.0, 4.0, 5.0}, {"r_mag"}), Error);
  unchanged("five norms for six latents");
  p.own.push_back({"wide", uniform_tensor(Shape{7}, -1, 1, rng)});
  EXPECT_THROW(fold_dictionary_norms(p, norms, {"r_mag", "wide"}), Error);
  unchanged("an own tensor of seven");
  p.own.pop_back();
  EXPECT_THROW(scaled_host(p.W_dec, {1.0, 2.0}, {}), Error);  // two row factors for six rows
  const Tensor held = p.W_dec;  // another handle: W_dec is copied
  fold_dictionary_norms(p, norms, {"r_mag"});
  EXPECT_EQ(p.W_enc.raw(), w_enc_bytes);
  EXPECT_FALSE(p.W_dec.shares_storage(held));
  EXPECT_EQ(held.to_vector(), W_dec);
  const std::vector<double> enc = p.W_enc.to_vector(), dec = p.W_dec.to_vector(), bias = p.b_enc.to_vector(),
                            own = p.own[0].tensor.to_vector();
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(bias[i], float(b_enc[i] * norms[i]));
    EXPECT_EQ(own[i], float(r_mag[i] * norms[i]));
    for (size_t j = 0; j < 4; ++j) {
      EXPECT_EQ(enc[j * 6 + i], float(W_enc[j * 6 + i] * norms[i]));
      EXPECT_EQ(dec[i * 4 + j], float(W_dec[i * 4 + j] * (1.0 / norms[i])));
    }
  }
}
