// The standard SAE's fused step at --precision tf32 and bf16 on the CPU, against its autograd
// reference at the same precision: both multiply the same float32 operands in their GEMMs (x, W_enc,
// f, W_dec, dL/dx_hat = 2 r, dL/dpre), so both round the same values and differ only by the order of
// float32 sums, as at fp32. And both differ from the fp32 step by the rounding of the inputs, which
// shows that the precision reached every GEMM of the step.
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
    const Grads g = step_and_reference(start, x, lambda);
    // Fused against reference: float32 sums in two orders, as at fp32 (test_sae_model.cpp's 1e-5).
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
