// The standard unit's fused kernels (sae/arch/standard/standard_kernels.h): decoder_penalty,
// decoder_residual, decoder_penalty_backward and encoder_backward on the CPU against their formulas
// written out here as double loops, in float32 and float64 (every output starts as NaN, so one that
// is never written fails); the fused dense step (SaeStep) against the unfused op sequence it replaced
// (written out below), bit for bit on the CPU; bad arguments; and the CUDA kernels against the CPU's,
// twice each to show that they repeat bit for bit (skipped without a GPU). encoder_activate's CUDA
// parity is in tests/sae/step/test_cuda_sae.cpp. Letters: N tokens, D width, F latents.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "sae/arch/standard/standard_kernels.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tensor/rng.h"
#include "tests/util/compare.h"
#include "tests/util/gpu.h"
#include "tests/util/standard_sae.h"

using namespace sae;
using sae::testing::expect_bitwise_equal;
using sae::testing::expect_close;
using sae::testing::expect_close_to_scale;
using sae::testing::expect_relative;
using sae::testing::kExact;
using sae::testing::nan_filled;
using sae::testing::random_cpu;

namespace {

const DType kDTypes[] = {DType::F32, DType::F64};
constexpr double kLambda = 0.37;

// Relative tolerances: one value (a few roundings), and a sum of many terms (each kernel sums in
// double, but its inputs and output are rounded to the dtype).
double element_rel(DType d) { return d == DType::F32 ? 1e-6 : 1e-14; }
double sum_rel(DType d) { return d == DType::F32 ? 1e-6 : 1e-12; }

// Shapes big enough that the CPU kernels run on several threads (>= 2^18 values) and the sums in
// chunks (>= 2^16), a small odd one, and empty ones (their sums are 0).
const Shape kDecoderShapes[] = {Shape{700, 400}, Shape{7, 13}, Shape{0, 4}, Shape{3, 0}};

std::string label(const std::string& what, DType d, const Shape& s) { return what + " " + dtype_name(d) + s.str(); }

// ---- the formulas, in double ----

struct PenaltyExpected {
  std::vector<double> norms;
  double l1 = 0, active = 0;
};
PenaltyExpected penalty_formula(const Tensor& W, const Tensor& col_sum, const Tensor& col_count) {
  const int64_t rows = W.size(0), cols = W.size(1);
  const std::vector<double> w = W.to_vector(), s = col_sum.to_vector(), c = col_count.to_vector();
  PenaltyExpected e;
  for (int64_t i = 0; i < rows; ++i) {
    double squares = 0;
    for (int64_t j = 0; j < cols; ++j) squares += w[i * cols + j] * w[i * cols + j];
    e.norms.push_back(std::sqrt(squares));
    e.l1 += s[i] * e.norms[i];
    e.active += c[i];
  }
  return e;
}

// Column sums and counts as encoder_activate would give them for N tokens: counts are integers.
struct ColumnStats {
  Tensor col_sum, col_count;
};
ColumnStats column_stats(int64_t f, DType d, Rng& rng) {
  std::vector<double> sum(f), count(f);
  for (int64_t i = 0; i < f; ++i) {
    count[i] = double(rng.below(50));
    sum[i] = count[i] == 0 ? 0.0 : rng.uniform(0.0, 10.0);
  }
  return {Tensor::from_vector(sum, Shape{f}, d), Tensor::from_vector(count, Shape{f}, d)};
}

}  // namespace

// ---------------------------------------------------------------- CPU kernels against the formulas

TEST(StandardKernels, DecoderPenaltyMatchesItsFormula) {
  Rng rng(201);
  for (DType d : kDTypes)
    for (const Shape& s : kDecoderShapes) {
      const int64_t f = s[0];
      const Tensor W = random_cpu(s, d, rng, -0.2, 0.2);
      const ColumnStats stats = column_stats(f, d, rng);
      Tensor norms = nan_filled(Shape{f}, d), l1 = nan_filled(Shape{1}, d), active = nan_filled(Shape{1}, d);
      decoder_penalty_(norms, l1, active, W, stats.col_sum, stats.col_count);
      const PenaltyExpected e = penalty_formula(W, stats.col_sum, stats.col_count);
      expect_close(norms, Tensor::from_vector(e.norms, Shape{f}, d), {0.0, sum_rel(d)}, label("norms", d, s));
      expect_relative(l1.item(), e.l1, sum_rel(d), label("l1", d, s));
      EXPECT_EQ(active.item(), e.active) << label("active (a sum of integers: exact)", d, s);
    }
}

TEST(StandardKernels, DecoderResidualMatchesItsFormula) {
  Rng rng(202);
  for (DType d : kDTypes)
    for (const Shape& s : kDecoderShapes)
      for (bool with_bias : {true, false}) {
        const std::string what = label(with_bias ? "residual" : "residual without bias", d, s);
        const int64_t n = s[0], cols = s[1];
        const Tensor x_hat_in = random_cpu(s, d, rng), target = random_cpu(s, d, rng);
        const Tensor bias = with_bias ? random_cpu(Shape{cols}, d, rng) : Tensor();
        Tensor x_hat = x_hat_in.clone(), grad = nan_filled(s, d), rec = nan_filled(Shape{1}, d);
        decoder_residual_(x_hat, bias, target, grad, rec);

        const std::vector<double> xv = x_hat_in.to_vector(), tv = target.to_vector();
        const std::vector<double> bv = with_bias ? bias.to_vector() : std::vector<double>(cols, 0.0);
        std::vector<double> want_x_hat(xv.size()), want_grad(xv.size());
        double want_rec = 0;
        for (int64_t t = 0; t < n; ++t)
          for (int64_t j = 0; j < cols; ++j) {
            const int64_t i = t * cols + j;
            want_x_hat[i] = xv[i] + bv[j];
            const double r = want_x_hat[i] - tv[i];
            want_grad[i] = 2 * r;
            want_rec += r * r;
          }
        if (with_bias)
          expect_close_to_scale(x_hat, Tensor::from_vector(want_x_hat, s, d), element_rel(d), what + " x_hat");
        else
          expect_bitwise_equal(x_hat, x_hat_in, what + " x_hat untouched");
        expect_close_to_scale(grad, Tensor::from_vector(want_grad, s, d), element_rel(d), what + " grad = 2 r");
        expect_relative(rec.item(), want_rec, sum_rel(d), what + " rec");
      }
}

TEST(StandardKernels, DecoderPenaltyBackwardMatchesItsFormula) {
  Rng rng(203);
  for (DType d : kDTypes)
    for (const Shape& s : kDecoderShapes) {
      const int64_t f = s[0], cols = s[1];
      const Tensor W = random_cpu(s, d, rng, -0.2, 0.2), grad_in = random_cpu(s, d, rng);
      std::vector<double> norms = penalty_formula(W, Tensor::zeros(Shape{f}, d), Tensor::zeros(Shape{f}, d)).norms;
      std::vector<double> col_sum = column_stats(f, d, rng).col_sum.to_vector();
      // Row 0: a zero norm (a dead decoder row's), floored at 1e-30, with a column sum of the same
      // scale so that the scale stays finite: lambda * 0.5.
      const bool has_row0 = s.numel() > 0;
      if (has_row0) norms[0] = 0.0, col_sum[0] = 0.5e-30;
      const Tensor norms_t = Tensor::from_vector(norms, Shape{f}, d), col_sum_t = Tensor::from_vector(col_sum, Shape{f}, d);
      Tensor grad = grad_in.clone();
      decoder_penalty_backward_(grad, W, norms_t, col_sum_t, kLambda);

      const std::vector<double> w = W.to_vector(), g = grad_in.to_vector(), n = norms_t.to_vector(),
                                c = col_sum_t.to_vector();
      std::vector<double> want(g.size());
      for (int64_t i = 0; i < f; ++i)
        for (int64_t j = 0; j < cols; ++j)
          want[i * cols + j] = g[i * cols + j] + kLambda * c[i] / std::max(n[i], 1e-30) * w[i * cols + j];
      expect_close_to_scale(grad, Tensor::from_vector(want, s, d), element_rel(d), label("penalty backward", d, s));
      if (!has_row0) continue;
      const double row0 = g[0] + kLambda * 0.5 * w[0];
      EXPECT_NEAR(grad.to_vector()[0], row0, 1e-5 * std::abs(row0) + 1e-30) << "the 1e-30 floor, " << dtype_name(d);
    }
}

TEST(StandardKernels, EncoderBackwardMatchesItsFormula) {
  Rng rng(204);
  for (DType d : kDTypes)
    for (const Shape& s : {Shape{257, 1100}, Shape{7, 13}}) {
      const int64_t n = s[0], cols = s[1];
      // f: about a third exact zeros and a third negative (both "off"), the rest positive.
      std::vector<double> fv(s.numel());
      for (double& x : fv) {
        const uint64_t kind = rng.below(3);
        x = kind == 0 ? 0.0 : (kind == 1 ? -rng.uniform(0.0, 1.0) : rng.uniform(1e-3, 2.0));
      }
      const Tensor f = Tensor::from_vector(fv, s, d), grad_in = random_cpu(s, d, rng);
      const Tensor norms = random_cpu(Shape{cols}, d, rng, 0.0, 2.0);
      Tensor grad = grad_in.clone(), col_sum = nan_filled(Shape{cols}, d);
      encoder_backward_(grad, f, norms, kLambda, col_sum);

      const std::vector<double> g = grad_in.to_vector(), nv = norms.to_vector();
      std::vector<double> want(g.size()), want_sum(cols, 0.0);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < cols; ++j) {
          const int64_t i = t * cols + j;
          want[i] = fv[i] > 0 ? g[i] + kLambda * nv[j] : 0.0;
          want_sum[j] += want[i];
        }
      expect_close_to_scale(grad, Tensor::from_vector(want, s, d), element_rel(d), label("dpre", d, s));
      // Column sums add N values in the dtype: within N roundings of the largest.
      expect_close_to_scale(col_sum, Tensor::from_vector(want_sum, Shape{cols}, d),
                            d == DType::F32 ? 3e-5 : 1e-13, label("db_enc", d, s));
    }
}

TEST(StandardKernels, Bf16ActivationsAreReadWidenedAndWrittenRounded) {
  // f and dL/df stored as bf16 with float32 vectors (the step's activations at --precision bf16):
  // encoder_activate stores bf16(max(pre + b, 0)) and sums and counts the stored values;
  // encoder_backward stores bf16((g + lambda n) [f > 0]) and sums the values before rounding.
  Rng rng(205);
  for (const Shape& s : {Shape{257, 1100}, Shape{7, 13}}) {
    const int64_t n = s[0], cols = s[1];
    const Tensor pre = random_cpu(s, DType::F32, rng).to(DType::BF16);
    const Tensor bias = random_cpu(Shape{cols}, DType::F32, rng, -0.5, 0.5);
    Tensor f = pre.clone(), col_sum = nan_filled(Shape{cols}, DType::F32), col_count = nan_filled(Shape{cols}, DType::F32);
    encoder_activate_(f, bias, col_sum, col_count);
    ASSERT_EQ(f.dtype(), DType::BF16);
    const std::vector<double> pv = pre.to(DType::F32).to_vector(), bv = bias.to_vector();
    std::vector<double> want(pv.size()), want_sum(cols, 0.0), want_count(cols, 0.0);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t i = t * cols + j;
        const float sum32 = static_cast<float>(pv[i]) + static_cast<float>(bv[j]);  // float32, as the kernel adds
        want[i] = double(round_to_bf16(std::max(sum32, 0.0f)));
        want_sum[j] += want[i];
        want_count[j] += want[i] > 0;
      }
    expect_close(f.to(DType::F32), Tensor::from_vector(want, s), kExact, label("f bf16", DType::BF16, s));
    expect_close(col_count, Tensor::from_vector(want_count, Shape{cols}), kExact, label("counts", DType::BF16, s));
    expect_close_to_scale(col_sum, Tensor::from_vector(want_sum, Shape{cols}), 3e-5, label("sums", DType::BF16, s));

    const Tensor grad_in = random_cpu(s, DType::F32, rng).to(DType::BF16);
    const Tensor norms = random_cpu(Shape{cols}, DType::F32, rng, 0.0, 2.0);
    Tensor grad = grad_in.clone(), db_enc = nan_filled(Shape{cols}, DType::F32);
    encoder_backward_(grad, f, norms, kLambda, db_enc);
    const std::vector<double> g = grad_in.to(DType::F32).to_vector(), nv = norms.to_vector();
    std::vector<double> want_g(g.size()), want_db(cols, 0.0);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t i = t * cols + j;
        const float add = static_cast<float>(kLambda) * static_cast<float>(nv[j]);
        const float v = want[i] > 0 ? static_cast<float>(g[i]) + add : 0.0f;
        want_g[i] = double(round_to_bf16(v));
        want_db[j] += v;
      }
    expect_close(grad.to(DType::F32), Tensor::from_vector(want_g, s), kExact, label("dpre bf16", DType::BF16, s));
    expect_close_to_scale(db_enc, Tensor::from_vector(want_db, Shape{cols}), 3e-5, label("db_enc", DType::BF16, s));
  }
  // bf16 activations need float32 vectors, and grad and f of one dtype.
  Tensor f16 = Tensor::full(Shape{2, 3}, 1.0).to(DType::BF16), v32 = Tensor::zeros(Shape{3});
  Tensor v64 = Tensor::zeros(Shape{3}, DType::F64), g32 = Tensor::zeros(Shape{2, 3});
  EXPECT_THROW(encoder_activate_(f16, v64, v32, v32), Error);
  EXPECT_THROW(encoder_backward_(g32, f16, v32, 1.0, v32), Error);
}

TEST(StandardKernels, BadArgumentsAreOneLineErrors) {
  const Tensor W = Tensor::zeros(Shape{4, 3}), v4 = Tensor::zeros(Shape{4}), v3 = Tensor::zeros(Shape{3});
  Tensor norms = Tensor::zeros(Shape{4}), one = Tensor::zeros(Shape{1}), two = Tensor::zeros(Shape{2});
  auto message = [](const std::function<void()>& run) {
    try {
      run();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { decoder_penalty_(norms, one, one, W, v3, v4); }).find("decoder_penalty: expects [R, C] and [R]"),
            std::string::npos);
  EXPECT_NE(message([&] { decoder_penalty_(norms, two, one, W, v4, v4); }).find("should hold one element"),
            std::string::npos);
  Tensor x_hat = Tensor::zeros(Shape{2, 3}), grad = Tensor::zeros(Shape{2, 3});
  EXPECT_NE(message([&] { decoder_residual_(x_hat, v4, x_hat.clone(), grad, one); }).find("decoder_residual"),
            std::string::npos);
  EXPECT_NE(message([&] { decoder_residual_(x_hat, v3, x_hat.clone(), x_hat, one); }).find("must not be x_hat"),
            std::string::npos);
  Tensor wrong = Tensor::zeros(Shape{3, 4});
  EXPECT_NE(message([&] { decoder_penalty_backward_(wrong, W, v4, v4, 1.0); }).find("decoder_penalty_backward"),
            std::string::npos);
  Tensor f64 = Tensor::zeros(Shape{2, 3}, DType::F64);
  EXPECT_NE(message([&] { encoder_backward_(grad, f64, v3, 1.0, norms); }).find("encoder_backward"), std::string::npos);
}

// ---------------------------------------------------------------- the fused step is the unfused one

namespace {

struct DenseStepResult {
  Tensor x_hat;
  SaeParams grads;
  double rec = 0, l1 = 0, active = 0;
};

// encoder_backward as it was before it took (norms, lambda): row_add given, each column summed in
// the dtype in row order.
template <typename T>
void old_encoder_backward(Tensor& grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum) {
  T* g = grad.data<T>();
  const T *fv = f.data<T>(), *a = row_add.data<T>();
  T* s = col_sum.data<T>();
  const int64_t rows = f.size(0), cols = f.size(1);
  for (int64_t j = 0; j < cols; ++j) s[j] = T(0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const T v = (g[r * cols + j] + a[j]) * static_cast<T>(fv[r * cols + j] > T(0));
      g[r * cols + j] = v;
      s[j] += v;
    }
}

// The standard SAE's dense step on the CPU as the op sequence that standard.cpp ran before its
// element-wise work was fused (main of 2026-12-05).
DenseStepResult unfused_dense_step(const SaeParams& p, const Tensor& x, double lambda) {
  const int64_t n = x.size(0), d = p.d_in(), fc = p.d_sae();
  const DType dt = x.dtype();
  Tensor f = Tensor::zeros(Shape{n, fc}, dt), x_hat = Tensor::zeros(Shape{n, d}, dt), r = Tensor::zeros(Shape{n, d}, dt);
  Tensor col_sum = Tensor::zeros(Shape{fc}, dt), col_count = Tensor::zeros(Shape{fc}, dt);
  Tensor norms = Tensor::zeros(Shape{fc}, dt), scratch = Tensor::zeros(Shape{fc}, dt), sums = Tensor::zeros(Shape{3}, dt);
  Tensor tiny = Tensor::full(Shape{1}, 1e-30, dt);
  Tensor rec = sums.slice_rows(0, 1), l1 = sums.slice_rows(1, 2), active = sums.slice_rows(2, 3);
  matmul_(f, x, false, p.W_enc, false);
  encoder_activate_(f, p.b_enc, col_sum, col_count);
  reduce_all_(ReduceOp::sum, active, col_count);
  matmul_(x_hat, f, false, p.W_dec, false);
  add_(x_hat, p.b_dec);
  binary_(BinaryOp::sub, r, x_hat, x);
  reduce_all_(ReduceOp::sum_squares, rec, r);
  reduce_axis_(ReduceOp::norm2, norms, p.W_dec, 1);
  binary_(BinaryOp::mul, scratch, col_sum, norms);
  reduce_all_(ReduceOp::sum, l1, scratch);

  DenseStepResult out;
  out.grads = SaeParams::zeros_like(p);
  SaeParams& g = out.grads;
  affine_(r, r, 2.0, 0.0);
  reduce_axis_(ReduceOp::sum, g.b_dec, r, 0);
  matmul_(g.W_dec, f, true, r, false);
  binary_(BinaryOp::maximum, scratch, norms, tiny);
  binary_(BinaryOp::div, scratch, col_sum, scratch);
  affine_(scratch, scratch, lambda, 0.0);
  add_scaled_rows_(g.W_dec, p.W_dec, scratch);
  Tensor grad_f = Tensor::zeros(Shape{n, fc}, dt);
  matmul_(grad_f, r, false, p.W_dec, true);
  affine_(scratch, norms, lambda, 0.0);
  if (dt == DType::F32)
    old_encoder_backward<float>(grad_f, f, scratch, g.b_enc);
  else
    old_encoder_backward<double>(grad_f, f, scratch, g.b_enc);
  matmul_(g.W_enc, x, true, grad_f, false);

  const std::vector<double> host = sums.to_vector();
  out.rec = host[0], out.l1 = host[1], out.active = host[2];
  out.x_hat = x_hat;
  return out;
}

}  // namespace

TEST(StandardKernels, FusedDenseStepIsTheUnfusedOpsBitForBit) {
  // 300 x 300 activations: the sums over x_hat run in chunks; 300 x 1000 features: the passes over f
  // and W_dec run on every thread. And a small odd shape.
  struct Case {
    int64_t n, d, f;
  };
  for (const Case& c : {Case{300, 300, 1000}, Case{9, 5, 11}})
    for (DType dt : kDTypes) {
      const std::string what = cat(dtype_name(dt), " N ", c.n, " D ", c.d, " F ", c.f);
      Rng rng(205);
      SaeParams p = SaeParams::standard_init(c.d, c.f, rng, dt);
      p.b_dec = random_cpu(Shape{c.d}, dt, rng, -0.1, 0.1);
      const Tensor x = random_cpu(Shape{c.n, c.d}, dt, rng);
      // About 30% of f fires; latent 1 never does, and latent 0's decoder row is zero (its norm is
      // floored at 1e-30 in the gradient).
      std::vector<double> b_enc = sae::testing::bias_for_density(x, p.W_enc, 0.3).to_vector();
      b_enc[1] = -1e9;
      p.b_enc = Tensor::from_vector(b_enc, Shape{c.f}, dt);
      Tensor row0 = p.W_dec.slice_rows(0, 1);
      fill_(row0, 0.0);

      const DenseStepResult want = unfused_dense_step(p, x, kLambda);
      SaeStep step = sae::testing::standard_step(c.n, c.d, c.f, dt, Device::CPU, SparseMode::Off);
      SaeParams grads = SaeParams::zeros_like(p);
      const StepSums got = step.forward_backward(p, x, kLambda, grads);
      EXPECT_EQ(got.rec, want.rec) << what;
      EXPECT_EQ(got.l1, want.l1) << what;
      EXPECT_EQ(got.active, want.active) << what;
      EXPECT_GT(want.active, 0.1 * double(c.n * c.f)) << what;
      expect_bitwise_equal(step.reconstruction(), want.x_hat, what + " x_hat");
      expect_bitwise_equal(grads.W_enc, want.grads.W_enc, what + " dW_enc");
      expect_bitwise_equal(grads.b_enc, want.grads.b_enc, what + " db_enc");
      expect_bitwise_equal(grads.W_dec, want.grads.W_dec, what + " dW_dec");
      expect_bitwise_equal(grads.b_dec, want.grads.b_dec, what + " db_dec");
    }
}

// ---------------------------------------------------------------- CUDA against the CPU

namespace {
Tensor on_gpu(const Tensor& t) { return t.defined() ? t.to(Device::CUDA) : Tensor(); }

// A sum of up to 6M positive terms added in double in two orders, then rounded to the dtype: float32
// results differ by that last rounding at most; float64 ones by the double roundings (well below
// n u in practice).
double gpu_sum_rel(DType d) { return d == DType::F32 ? 1e-6 : 1e-11; }

// Decoder shapes: tiny, odd, the study's [10000, 768], rows longer than a warp's sweep, more rows
// than one block's slice (several blocks and the finishing kernel), more than the most blocks hold
// at their usual size (the slices grow), and empty ones.
std::vector<Shape> gpu_decoder_shapes() {
  return {Shape{1, 1},    Shape{7, 13},     Shape{10000, 768}, Shape{65, 3000},
          Shape{2049, 5}, Shape{40000, 3}, Shape{0, 4},       Shape{3, 0}};
}
// x_hat shapes: also one story [218, 768], the token batch [4096, 768], more rows than the most
// blocks hold at their usual size, rows wider than a block's slice.
std::vector<Shape> gpu_residual_shapes() {
  return {Shape{1, 1},      Shape{7, 13},     Shape{218, 768}, Shape{4096, 768},
          Shape{6000, 1024}, Shape{3, 10000}, Shape{0, 5},     Shape{5, 0}};
}
}  // namespace

TEST(CudaStandardKernels, DecoderPenaltyMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Rng rng(211);
  for (DType d : kDTypes)
    for (const Shape& s : gpu_decoder_shapes()) {
      const std::string what = label("decoder_penalty", d, s);
      const int64_t f = s[0];
      const Tensor W = random_cpu(s, d, rng, -0.2, 0.2);
      const ColumnStats stats = column_stats(f, d, rng);
      Tensor norms = nan_filled(Shape{f}, d), l1 = nan_filled(Shape{1}, d), active = nan_filled(Shape{1}, d);
      decoder_penalty_(norms, l1, active, W, stats.col_sum, stats.col_count);
      Tensor W_gpu = on_gpu(W), sum_gpu = on_gpu(stats.col_sum), count_gpu = on_gpu(stats.col_count);
      Tensor g_norms = nan_filled(Shape{f}, d, Device::CUDA), g_l1 = nan_filled(Shape{1}, d, Device::CUDA),
             g_active = nan_filled(Shape{1}, d, Device::CUDA);
      decoder_penalty_(g_norms, g_l1, g_active, W_gpu, sum_gpu, count_gpu);
      expect_close(g_norms.to(Device::CPU), norms, {0.0, gpu_sum_rel(d)}, what + " norms");
      expect_close(g_l1.to(Device::CPU), l1, {0.0, gpu_sum_rel(d)}, what + " l1");
      expect_close(g_active.to(Device::CPU), active, kExact, what + " active");
      Tensor again_norms = nan_filled(Shape{f}, d, Device::CUDA), again_l1 = nan_filled(Shape{1}, d, Device::CUDA),
             again_active = nan_filled(Shape{1}, d, Device::CUDA);
      decoder_penalty_(again_norms, again_l1, again_active, W_gpu, sum_gpu, count_gpu);
      expect_bitwise_equal(again_norms, g_norms, what + " norms repeated");
      expect_bitwise_equal(again_l1, g_l1, what + " l1 repeated");
    }
}

TEST(CudaStandardKernels, DecoderResidualMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Rng rng(212);
  for (DType d : kDTypes)
    for (const Shape& s : gpu_residual_shapes())
      for (bool with_bias : {true, false}) {
        const std::string what = label(with_bias ? "decoder_residual" : "decoder_residual without bias", d, s);
        const Tensor x_hat_in = random_cpu(s, d, rng), target = random_cpu(s, d, rng);
        const Tensor bias = with_bias ? random_cpu(Shape{s[1]}, d, rng) : Tensor();
        Tensor x_hat = x_hat_in.clone(), grad = nan_filled(s, d), rec = nan_filled(Shape{1}, d);
        decoder_residual_(x_hat, bias, target, grad, rec);
        Tensor g_x_hat = on_gpu(x_hat_in), g_grad = nan_filled(s, d, Device::CUDA),
               g_rec = nan_filled(Shape{1}, d, Device::CUDA);
        const Tensor g_target = on_gpu(target), g_bias = on_gpu(bias);
        decoder_residual_(g_x_hat, g_bias, g_target, g_grad, g_rec);
        // One add, one subtraction and 2 r + 0 per value (no fused multiply-adds): the CPU's bits.
        expect_bitwise_equal(g_x_hat, x_hat, what + " x_hat");
        expect_bitwise_equal(g_grad, grad, what + " grad");
        expect_close(g_rec.to(Device::CPU), rec, {0.0, gpu_sum_rel(d)}, what + " rec");
        Tensor again_x_hat = on_gpu(x_hat_in), again_grad = nan_filled(s, d, Device::CUDA),
               again_rec = nan_filled(Shape{1}, d, Device::CUDA);
        decoder_residual_(again_x_hat, g_bias, g_target, again_grad, again_rec);
        expect_bitwise_equal(again_rec, g_rec, what + " rec repeated");
      }
}

TEST(CudaStandardKernels, DecoderPenaltyBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Rng rng(213);
  for (DType d : kDTypes)
    for (const Shape& s : gpu_decoder_shapes()) {
      const int64_t f = s[0];
      const Tensor W = random_cpu(s, d, rng, -0.2, 0.2), grad_in = random_cpu(s, d, rng);
      const Tensor norms = random_cpu(Shape{f}, d, rng, 0.0, 2.0);  // about one in ten 0: the floor
      const Tensor col_sum = column_stats(f, d, rng).col_sum;
      Tensor grad = grad_in.clone(), g_grad = on_gpu(grad_in);
      decoder_penalty_backward_(grad, W, norms, col_sum, kLambda);
      decoder_penalty_backward_(g_grad, on_gpu(W), on_gpu(norms), on_gpu(col_sum), kLambda);
      // The same divisions, products and sums in the same order (no fused multiply-adds).
      expect_bitwise_equal(g_grad, grad, label("decoder_penalty_backward", d, s));
    }
}
