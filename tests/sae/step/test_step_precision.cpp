// The standard SAE's fused step at --precision tf32 and bf16 on the CPU. At tf32, against its
// autograd reference at the same precision: both multiply the same float32 operands in their GEMMs
// (x, W_enc, f, W_dec, dL/dx_hat = 2 r, dL/dpre), so both round the same values and differ only by
// the order of float32 sums, as at fp32. At bf16 the step also keeps x W_enc, f and dL/df [N, F] in
// bfloat16 (sae/arch/unit.h activation_dtype), so its reference is the step's formulas written here
// with generic ops, rounding those values where the step stores them. Both precisions differ from
// the fp32 step by the rounding, which shows that it reached every GEMM of the step.
// Letters: N tokens, D input width, F features.
#include <gtest/gtest.h>

#include <cmath>

#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tensor/rng.h"
#include "tests/util/compare.h"
#include "tests/util/standard_sae.h"

using namespace sae;
using sae::testing::fused_backward;
using sae::testing::StandardSae;

namespace {

struct Grads {
  StepSums sums;
  std::vector<Tensor> fused, reference;  // W_enc, b_enc, W_dec, b_dec
  double ref_rec = 0, ref_l1 = 0;
};

// One dense step and its reference on x [N, D] at the current precision.
Grads step_and_reference(const SaeParams& start, const Tensor& x, double lambda) {
  StandardSae fused(start.W_enc.clone(), start.b_enc.clone(), start.W_dec.clone(), start.b_dec.clone());
  StandardSae reference(start.W_enc.clone(), start.b_enc.clone(), start.W_dec.clone(), start.b_dec.clone());
  SaeStep step = sae::testing::standard_step(x.size(0), x.size(1), start.d_sae(), DType::F32, Device::CPU);
  Grads g;
  g.sums = fused_backward(step, fused, x, lambda);
  auto loss = reference.loss(Variable(x), lambda);
  loss.total.backward();
  g.ref_rec = loss.rec.data().item();
  g.ref_l1 = loss.l1.data().item();
  for (auto& [name, v] : fused.named_parameters()) g.fused.push_back(v.grad().clone());
  for (auto& [name, v] : reference.named_parameters()) g.reference.push_back(v.grad().clone());
  return g;
}

// The standard step at bf16 by its formulas (sae/arch/standard/standard.cpp), with generic ops and
// the [N, F] values rounded to bf16 where the step stores them: pre = x W_enc, f, and the decoder's
// part of dL/df (dL/dpre is rounded again where dW_enc's GEMM reads it; db_enc sums it unrounded).
Grads bf16_formulas(const SaeParams& p, const Tensor& x, double lambda) {
  auto stored = [](const Tensor& t) { return t.to(DType::BF16).to(DType::F32); };
  const Tensor f = stored(relu(add(stored(matmul(x, p.W_enc)), p.b_enc)));
  const Tensor r = sub(add(matmul(f, p.W_dec), p.b_dec), x);
  const Tensor norms = norm2(p.W_dec, 1), col_sum = sum(f, 0);
  Grads g;
  g.ref_rec = sum(square(r)).item();
  g.ref_l1 = sum(mul(col_sum, norms)).item();
  const Tensor dx = mul_scalar(r, 2.0);
  const Tensor dW_dec = add(matmul(f, dx, true, false),
                            mul(mul_scalar(div(col_sum, norms), lambda).reshape(Shape{p.d_sae(), 1}), p.W_dec));
  const Tensor dpre = mul(add(stored(matmul(dx, p.W_dec, false, true)), mul_scalar(norms, lambda)), gt(f, Tensor::zeros(f.shape())));
  g.reference = {matmul(x, stored(dpre), true, false), sum(dpre, 0), dW_dec, sum(dx, 0)};
  return g;
}

double max_relative(const Tensor& a, const Tensor& b) {
  return reduce(ReduceOp::max, abs(sub(a, b))).item() / reduce(ReduceOp::max, abs(b)).item();
}

}  // namespace

TEST(StepPrecision, FusedStepMatchesItsReferenceAtEachPrecision) {
  Rng rng(21);
  const int64_t n = 96, d = 40, f = 300;
  const SaeParams start = SaeParams::standard_init(d, f, rng);
  const Tensor x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng);
  const double lambda = 0.5;
  const char* names[4] = {"W_enc", "b_enc", "W_dec", "b_dec"};
  const Grads fp32 = step_and_reference(start, x, lambda);
  for (Precision p : {Precision::TF32, Precision::BF16}) {
    const ScopedMatmulPrecision scope(p);
    Grads g = step_and_reference(start, x, lambda);
    if (p == Precision::BF16) {
      const Grads formulas = bf16_formulas(start, x, lambda);
      g.reference = formulas.reference;
      g.ref_rec = formulas.ref_rec;
      g.ref_l1 = formulas.ref_l1;
    }
    // Fused against reference: float32 sums in two orders, as at fp32 (test_sae_model.cpp's 1e-5).
    // At bf16 the roundings of [N, F] values are the same in both (same GEMM, same float32 adds).
    EXPECT_NEAR(g.sums.rec, g.ref_rec, 1e-5 * g.ref_rec) << precision_name(p);
    EXPECT_NEAR(g.sums.l1, g.ref_l1, 1e-5 * g.ref_l1) << precision_name(p);
    for (int i = 0; i < 4; ++i) {
      EXPECT_LT(max_relative(g.fused[i], g.reference[i]), 2e-5) << precision_name(p) << " " << names[i];
      // The rounding reached this gradient: it moved from fp32's by more than float32 sums could
      // (b_dec's gradient is 2 sum_t r: x_hat came through the rounded decoder GEMM). How far it moved
      // is not bounded here: dW_enc and db_enc are sums over tokens with much cancellation, so their
      // largest value is small against the terms (measured: 2.4% / 12% of it for tf32 / bf16).
      const double moved = max_relative(g.fused[i], fp32.fused[i]);
      EXPECT_GT(moved, p == Precision::BF16 ? 2e-4 : 2e-5) << precision_name(p) << " " << names[i];
    }
    EXPECT_GT(std::abs(g.sums.rec - fp32.sums.rec), (p == Precision::BF16 ? 1e-5 : 1e-6) * fp32.sums.rec)
        << precision_name(p);
  }
}

TEST(StepPrecision, Bf16KeepsTheActivationsInBf16AsTheFormulasRoundThem) {
  // At bf16 the step's f [N, F] is bf16, bit-equal to bf16(relu(bf16(x W_enc) + b_enc)); at tf32 it
  // is float32. A step made at one precision follows the precision of its later batches (forward and
  // backward: the gradient must not depend on the precision of earlier batches).
  Rng rng(22);
  const int64_t n = 64, d = 24, f = 200;
  const SaeParams start = SaeParams::standard_init(d, f, rng);
  const Tensor x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng);
  SaeStep step = sae::testing::standard_step(n, d, f, DType::F32, Device::CPU);
  for (Precision p : {Precision::TF32, Precision::BF16, Precision::FP32, Precision::BF16}) {
    const ScopedMatmulPrecision scope(p);
    SaeParams grads = SaeParams::zeros_like(start), fresh_grads = SaeParams::zeros_like(start);
    step.forward_backward(start, x, 0.5, grads);  // the backward's dL/df buffer follows too
    SaeStep fresh = sae::testing::standard_step(n, d, f, DType::F32, Device::CPU);
    fresh.forward_backward(start, x, 0.5, fresh_grads);
    sae::testing::expect_bitwise_equal(grads.W_enc, fresh_grads.W_enc, cat("dW_enc at ", precision_name(p)));
    const Tensor got = step.features();
    ASSERT_EQ(got.dtype(), p == Precision::BF16 ? DType::BF16 : DType::F32) << precision_name(p);
    if (p != Precision::BF16) continue;
    const Tensor want = relu(add(matmul(x, start.W_enc).to(DType::BF16).to(DType::F32), start.b_enc)).to(DType::BF16);
    sae::testing::expect_close(got.to(DType::F32), want.to(DType::F32), sae::testing::kExact, "f at bf16");
  }
}

TEST(StepPrecision, SparsePathAtBf16DecodesTheBf16Features) {
  // At bf16 with --sparse on, the step lists the entries of its bf16 f (widened): its features are the
  // dense step's bit for bit, and x_hat is the float32 decode of the widened f (the sparse products
  // are float32: only the GEMMs round their inputs).
  Rng rng(23);
  const int64_t n = 50, d = 16, f = 120;
  const SaeParams start = SaeParams::standard_init(d, f, rng);
  const Tensor x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng);
  const ScopedMatmulPrecision scope(Precision::BF16);
  SaeStep dense = sae::testing::standard_step(n, d, f, DType::F32, Device::CPU, SparseMode::Off);
  SaeStep sparse = sae::testing::standard_step(n, d, f, DType::F32, Device::CPU, SparseMode::On);
  const StepSums a = dense.forward(start, x, 0.5), b = sparse.forward(start, x, 0.5);
  EXPECT_FALSE(a.sparse);
  ASSERT_TRUE(b.sparse);
  EXPECT_EQ(a.active, b.active);
  EXPECT_GT(b.active, 0);
  sae::testing::expect_bitwise_equal(sparse.features(), dense.features(), "bf16 f");
  Tensor want;
  {
    const ScopedMatmulPrecision fp32(Precision::FP32);
    want = add(matmul(sparse.features().to(DType::F32), start.W_dec), start.b_dec);
  }
  sae::testing::expect_close_to_scale(sparse.reconstruction(), want, 1e-6, "sparse x_hat");
}
