// CUDA checks of the SAE path: the three fused kernels (encoder_activate, encoder_backward,
// add_scaled_rows) against their CPU references on random inputs; float64 gradcheck of every
// differentiable op and of the SAE loss with the inputs on the GPU; the fused SaeStep on CUDA
// against the CPU for one full step; and a 200-step training run on CUDA against the CPU
// trajectory (metrics.csv and the final weights). Every test skips when no GPU is present.
// Letters: N tokens (rows of f), D input width, F features (columns of f).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tests/util/gradcheck.h"
#include "tests/util/test_util.h"
#include "nn/module.h"
#include "tests/util/standard_sae.h"
#include "sae/arch/sae_step.h"
#include "sae/train/trainer.h"
#include "tensor/cuda/backend.h"
#include "sae/arch/standard/standard_kernels.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tensor/rng.h"
#include "io/safetensors.h"
#include "tests/util/compare.h"
#include "tests/util/gpu.h"

using namespace sae;
using sae::testing::StandardSae;
using sae::testing::expect_same_saved_weights;
using sae::testing::Tolerance;
using sae::testing::kExact;
using sae::testing::expect_close;
using sae::testing::expect_close_to_scale;
using sae::testing::random_cpu;
using sae::testing::quantized_cpu;
using sae::testing::fused_backward;
using sae::testing::fused_train_step;
using sae::testing::gradcheck;
using sae::testing::random_off_kink;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const DType kDTypes[] = {DType::F32, DType::F64};

Tolerance elementwise_tol(DType d) { return d == DType::F32 ? Tolerance{1e-7, 1e-6} : Tolerance{1e-15, 1e-13}; }
double unit_roundoff(DType d) { return d == DType::F32 ? std::ldexp(1.0, -24) : std::ldexp(1.0, -53); }



std::string label(const char* op, DType d, const Shape& s) { return cat(op, " ", dtype_name(d), s.str()); }



Tensor poisoned(const Shape& shape, DType d) { return Tensor::full(shape, kNaN, d, Device::CUDA); }
Tensor on_gpu(const Tensor& t) { return t.to(Device::CUDA); }

// Column sums of the GPU kernels, checked two ways against `values` [N, F] (the CPU kernel's
// output, which the GPU output has already matched exactly):
//  - against the exact sum (long double on the host): the GPU adds in double and rounds once to T,
//    so it is within one rounding of T plus N double roundings of sum |values|;
//  - against the CPU kernel's sums, which add in T in row order: within N roundings of T of
//    sum |values| (the classic bound for recursive summation) on top of the GPU's own error.
void expect_column_sums(const Tensor& gpu_sum, const Tensor& cpu_sum, const Tensor& values, const std::string& what) {
  ASSERT_EQ(gpu_sum.device(), Device::CUDA) << what;
  const int64_t rows = values.size(0), cols = values.size(1);
  const double u = unit_roundoff(values.dtype()), u64 = std::ldexp(1.0, -53);
  const std::vector<double> v = values.to_vector(), g = gpu_sum.to_vector(), c = cpu_sum.to_vector();
  int64_t bad = 0;
  for (int64_t j = 0; j < cols; ++j) {
    long double exact = 0, magnitude = 0;
    for (int64_t r = 0; r < rows; ++r) {
      exact += v[r * cols + j];
      magnitude += std::abs(v[r * cols + j]);
    }
    const double e = static_cast<double>(exact), m = static_cast<double>(magnitude);
    const double gpu_bound = u * std::abs(e) + (rows + 2) * u64 * m;
    const double cpu_bound = gpu_bound + (rows + 2) * u * m;
    const bool ok = std::isfinite(e) ? std::abs(g[j] - e) <= gpu_bound && std::abs(g[j] - c[j]) <= cpu_bound
                                     : (std::isnan(e) ? std::isnan(g[j]) && std::isnan(c[j]) : g[j] == e && c[j] == e);
    if (!ok && ++bad <= 5)
      ADD_FAILURE() << what << ": column " << j << ": cuda " << g[j] << ", cpu " << c[j] << ", exact " << e
                    << " (sum |v| " << m << ")";
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << cols << " column sums off";
}

// Shapes of f [N, F]: tiny, not multiples of the 32-column tile or of the 8 thread rows, one story
// at the SAE's width, and N large enough that the rows are split into slices (N >= 1024), with a
// last slice shorter than the others (4099 rows in 8 slices of 513); empty ones.
std::vector<Shape> column_pass_shapes() {
  return {Shape{1, 1},     Shape{7, 13},  Shape{218, 10000}, Shape{300, 1025}, Shape{1500, 77},
          Shape{4099, 33}, Shape{0, 5},   Shape{3, 0}};
}

}  // namespace

// ---------------------------------------------------------------- the three fused kernels

namespace {
// [N, F] activations as float32 where they are bf16 (the step's at --precision bf16), for comparing.
Tensor widened(const Tensor& t) { return t.dtype() == DType::BF16 ? t.to(DType::F32) : t; }
DType vector_dtype(const Tensor& activations) {
  return activations.dtype() == DType::BF16 ? DType::F32 : activations.dtype();
}

void check_encoder_activate(const Tensor& f_in, const Tensor& bias, const std::string& what) {
  const DType d = vector_dtype(f_in);
  const Shape col{f_in.size(1)};
  Tensor f_cpu = f_in.clone(), sum_cpu = Tensor::full(col, kNaN, d), count_cpu = Tensor::full(col, kNaN, d);
  encoder_activate_(f_cpu, bias, sum_cpu, count_cpu);

  Tensor f_gpu = on_gpu(f_in), bias_gpu = on_gpu(bias), sum_gpu = poisoned(col, d), count_gpu = poisoned(col, d);
  encoder_activate_(f_gpu, bias_gpu, sum_gpu, count_gpu);
  expect_close(widened(f_gpu), widened(f_cpu), kExact, what + " f");  // one add and a compare: bitwise equal
  expect_close(count_gpu, count_cpu, kExact, what + " col_count");
  expect_close(count_gpu, sum(step(widened(f_cpu)), 0).reshape(col), kExact, what + " col_count by definition");
  expect_column_sums(sum_gpu, sum_cpu, widened(f_cpu), what + " col_sum");

  // No atomics: the same input gives the same bits.
  Tensor again_f = on_gpu(f_in), again_sum = poisoned(col, d), again_count = poisoned(col, d);
  encoder_activate_(again_f, bias_gpu, again_sum, again_count);
  expect_close(again_sum, sum_gpu.to(Device::CPU), kExact, what + " col_sum repeated");
}

void check_encoder_backward(const Tensor& grad_in, const Tensor& f, const Tensor& norms, const std::string& what,
                            double lambda = 0.37) {
  const DType d = vector_dtype(grad_in);
  const Shape col{grad_in.size(1)};
  Tensor g_cpu = grad_in.clone(), sum_cpu = Tensor::full(col, kNaN, d);
  encoder_backward_(g_cpu, f, norms, lambda, sum_cpu);

  Tensor g_gpu = on_gpu(grad_in), f_gpu = on_gpu(f), norms_gpu = on_gpu(norms), sum_gpu = poisoned(col, d);
  encoder_backward_(g_gpu, f_gpu, norms_gpu, lambda, sum_gpu);
  expect_close(widened(g_gpu), widened(g_cpu), kExact, what + " grad");
  // The column sums are of the float32 values before a bf16 dL/dpre rounds them (as on the CPU):
  // those values are what the float32 kernel makes of the widened inputs.
  Tensor values = widened(g_cpu);
  if (grad_in.dtype() == DType::BF16) {
    values = widened(grad_in).clone();
    Tensor unused = Tensor::full(col, kNaN, DType::F32);
    encoder_backward_(values, widened(f), norms, lambda, unused);
  }
  expect_column_sums(sum_gpu, sum_cpu, values, what + " col_sum");

  Tensor again_g = on_gpu(grad_in), again_sum = poisoned(col, d);
  encoder_backward_(again_g, f_gpu, norms_gpu, lambda, again_sum);
  expect_close(again_sum, sum_gpu.to(Device::CPU), kExact, what + " col_sum repeated");
}
}  // namespace

TEST(CudaSae, EncoderActivateMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Rng rng(101);
  for (DType d : kDTypes) {
    for (const Shape& s : column_pass_shapes()) {
      const Shape col{s[1]};
      check_encoder_activate(random_cpu(s, d, rng), random_cpu(col, d, rng, -1.0, 1.0), label("encoder_activate", d, s));
      // Quantized values: f + bias == 0 exactly in many places, which must neither fire nor count.
      check_encoder_activate(quantized_cpu(s, d, rng), quantized_cpu(col, d, rng),
                             label("encoder_activate quantized", d, s));
    }
  }
  // The token-batch shape of the study (f32 only: the CPU reference is the slow part).
  const Shape big{4096, 10000};
  check_encoder_activate(random_cpu(big, DType::F32, rng), random_cpu(Shape{10000}, DType::F32, rng, -1.0, 1.0),
                         label("encoder_activate", DType::F32, big));
}

TEST(CudaSae, EncoderBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Rng rng(102);
  for (DType d : kDTypes) {
    for (const Shape& s : column_pass_shapes()) {
      const Shape col{s[1]};
      // f: about a third exact zeros and a third negative (both are "off"), the rest positive.
      std::vector<double> fv(s.numel());
      for (double& x : fv) {
        const uint64_t kind = rng.below(3);
        x = kind == 0 ? 0.0 : (kind == 1 ? -rng.uniform(0.0, 1.0) : rng.uniform(1e-3, 2.0));
      }
      check_encoder_backward(random_cpu(s, d, rng), Tensor::from_vector(fv, s, d), random_cpu(col, d, rng),
                             label("encoder_backward", d, s));
    }
  }
  // Sparse features at the study's token-batch shape (most grad sectors are skipped on the GPU).
  const Shape big{4096, 10000};
  std::vector<double> fv(big.numel());
  for (double& x : fv) x = rng.below(50) == 0 ? rng.uniform(1e-3, 2.0) : 0.0;
  check_encoder_backward(random_cpu(big, DType::F32, rng), Tensor::from_vector(fv, big, DType::F32),
                         random_cpu(Shape{10000}, DType::F32, rng), label("encoder_backward sparse", DType::F32, big));
}

TEST(CudaSae, Bf16ActivationKernelsMatchCpu) {
  // f and dL/df stored as bf16 (the step's at --precision bf16), float32 vectors: the stored values
  // bit for bit (one float32 add and one rounding, as on the CPU), the sums as for float32.
  SKIP_WITHOUT_GPU();
  Rng rng(103);
  for (const Shape& s : column_pass_shapes()) {
    const Shape col{s[1]};
    const Tensor pre = random_cpu(s, DType::F32, rng).to(DType::BF16);
    check_encoder_activate(pre, random_cpu(col, DType::F32, rng, -1.0, 1.0), label("encoder_activate", DType::BF16, s));
    Tensor f = pre.clone(), sums = Tensor::zeros(col), counts = Tensor::zeros(col);
    encoder_activate_(f, Tensor::zeros(col), sums, counts);
    check_encoder_backward(random_cpu(s, DType::F32, rng).to(DType::BF16), f, random_cpu(col, DType::F32, rng),
                           label("encoder_backward", DType::BF16, s));
  }
}

// NaN and infinite values go through the fused kernels as on the CPU: a NaN pre-activation stays NaN
// (it is neither fired nor counted), and a non-finite gradient stays non-finite where f is 0 (the
// mask multiplies it, as autograd's g * step(pre) does), so NaN weights stop a run on both devices.
TEST(CudaSae, NonFiniteValuesAreHandledAsOnTheCpu) {
  SKIP_WITHOUT_GPU();
  const double inf = std::numeric_limits<double>::infinity();
  for (DType d : kDTypes) {
    const Shape s{5, 4}, col{4};
    const Tensor f_in = Tensor::from_vector({kNaN, 1, -1, 0, inf, -inf, 2, kNaN, 0.5, kNaN, -2, inf, 1, 1, 1, 1,
                                             -1, 3, kNaN, 0},
                                            s, d);
    const Tensor bias = Tensor::from_vector({0, kNaN, 0.25, -0.5}, col, d);
    check_encoder_activate(f_in, bias, cat("encoder_activate non-finite ", dtype_name(d)));
    const Tensor f = Tensor::from_vector({0, 1, 0, 2, kNaN, 0, 1, 0, 1, 1, 0, 0, 0, 0, 3, 1, 2, 0, 0, 0}, s, d);
    const Tensor grad = Tensor::from_vector({kNaN, 1, inf, 2, 1, kNaN, 3, 1, -inf, 2, kNaN, 1, 1, 1, 1, kNaN,
                                             0, 0, 0, 0},
                                            s, d);
    check_encoder_backward(grad, f, Tensor::from_vector({0.5, kNaN, 0, 1}, col, d),
                           cat("encoder_backward non-finite ", dtype_name(d)));
  }
}

TEST(CudaSae, FusedKernelsOnRowViewsLeaveTheRestAlone) {
  SKIP_WITHOUT_GPU();
  // SaeStep runs the kernels on rows [0, n) of a larger workspace; rows past n must not change.
  Rng rng(103);
  for (DType d : kDTypes) {
    const int64_t n = 1100, extra = 5, cols = 70;
    Tensor whole = random_cpu(Shape{n + extra, cols}, d, rng), bias = random_cpu(Shape{cols}, d, rng);
    Tensor cpu = whole.clone(), gpu = on_gpu(whole);
    Tensor cpu_rows = cpu.slice_rows(0, n), gpu_rows = gpu.slice_rows(0, n);
    Tensor sum_cpu = Tensor::empty(Shape{cols}, d), count_cpu = Tensor::empty(Shape{cols}, d);
    Tensor sum_gpu = poisoned(Shape{cols}, d), count_gpu = poisoned(Shape{cols}, d);
    encoder_activate_(cpu_rows, bias, sum_cpu, count_cpu);
    encoder_activate_(gpu_rows, on_gpu(bias), sum_gpu, count_gpu);
    expect_close(gpu, cpu, kExact, label("encoder_activate on a row view", d, whole.shape()));
    expect_close(gpu.slice_rows(n, n + extra), whole.slice_rows(n, n + extra), kExact, "rows past the view");

    Tensor grad = random_cpu(Shape{n + extra, cols}, d, rng);
    Tensor g_cpu = grad.clone(), g_gpu = on_gpu(grad);
    Tensor g_cpu_rows = g_cpu.slice_rows(0, n), g_gpu_rows = g_gpu.slice_rows(0, n);
    encoder_backward_(g_cpu_rows, cpu_rows, bias, 0.5, sum_cpu);
    encoder_backward_(g_gpu_rows, gpu_rows, on_gpu(bias), 0.5, sum_gpu);
    expect_close(g_gpu, g_cpu, kExact, label("encoder_backward on a row view", d, grad.shape()));
    expect_column_sums(sum_gpu, sum_cpu, g_cpu_rows, label("encoder_backward on a row view col_sum", d, grad.shape()));
  }
}

TEST(CudaSae, AddScaledRowsMatchesCpu) {
  SKIP_WITHOUT_GPU();
  // Includes the decoder's shape [F, D], more rows than grid y holds (65535), rows wider than one
  // sweep of grid x (1024 blocks x 256), and narrow rows.
  const std::vector<Shape> shapes = {Shape{1, 1},     Shape{7, 13},    Shape{10000, 768}, Shape{300, 1025},
                                     Shape{70001, 3}, Shape{2, 300001}, Shape{0, 4},       Shape{4, 0}};
  Rng rng(104);
  for (DType d : kDTypes) {
    for (const Shape& s : shapes) {
      Tensor out = random_cpu(s, d, rng), x = random_cpu(s, d, rng), scale = random_cpu(Shape{s[0]}, d, rng);
      Tensor ref = out.clone();
      add_scaled_rows_(ref, x, scale);
      Tensor g = on_gpu(out);
      add_scaled_rows_(g, on_gpu(x), on_gpu(scale));
      expect_close(g, ref, elementwise_tol(d), label("add_scaled_rows", d, s));
      // In place on itself: out += scale * out.
      Tensor self_ref = out.clone(), self_gpu = on_gpu(out);
      add_scaled_rows_(self_ref, self_ref, scale);
      add_scaled_rows_(self_gpu, self_gpu, on_gpu(scale));
      expect_close(self_gpu, self_ref, elementwise_tol(d), label("add_scaled_rows in place", d, s));
    }
  }
}

// ---------------------------------------------------------------- gradcheck on the GPU

namespace {
constexpr double kGradTol = 1e-7;
using Vars = std::vector<Variable>;
Tensor cuda64(const Tensor& t) { return t.to(Device::CUDA); }
Tensor positive_cuda(const Shape& s, Rng& rng) { return cuda64(random_off_kink(s, rng, 0.5, 2.0, 0.0)); }
Tensor off_kink_cuda(const Shape& s, Rng& rng) { return cuda64(random_off_kink(s, rng)); }
}  // namespace

TEST(CudaGradcheck, GradientsStayOnTheGpu) {
  SKIP_WITHOUT_GPU();
  Rng rng(200);
  Variable a(off_kink_cuda(Shape{3, 4}, rng), true), b(off_kink_cuda(Shape{4}, rng), true);
  Variable loss = ag::sum(ag::relu(a * b) + ag::square(a));
  loss.backward();
  EXPECT_EQ(a.grad().device(), Device::CUDA);
  EXPECT_EQ(b.grad().device(), Device::CUDA);
}

TEST(CudaGradcheck, BinaryOpsSameShapeAndBroadcast) {
  SKIP_WITHOUT_GPU();
  Rng rng(201);
  Tensor a = off_kink_cuda(Shape{3, 4}, rng), b = off_kink_cuda(Shape{3, 4}, rng);
  Tensor row = off_kink_cuda(Shape{4}, rng), col = off_kink_cuda(Shape{3, 1}, rng);
  Tensor s = off_kink_cuda(Shape{1}, rng), pos = positive_cuda(Shape{3, 4}, rng), pos_row = positive_cuda(Shape{4}, rng);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] + v[1]; }, {a, b}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] - v[1]; }, {a, row}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] * v[1]; }, {a, col}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] * v[1]; }, {s, a}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] / v[1]; }, {a, pos}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] / v[1]; }, {a, pos_row}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] - v[1]; }, {col, row}), kGradTol);
}

TEST(CudaGradcheck, UnaryOps) {
  SKIP_WITHOUT_GPU();
  Rng rng(202);
  Tensor x = off_kink_cuda(Shape{2, 5}, rng), p = positive_cuda(Shape{2, 5}, rng);
  EXPECT_LT(gradcheck([](const Vars& v) { return -v[0]; }, {x}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::square(v[0]); }, {x}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::sqrt(v[0]); }, {p}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::abs(v[0]); }, {x}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::relu(v[0]); }, {x}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::exp(v[0]); }, {x}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::log(v[0]); }, {p}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::affine(v[0], -1.5, 0.25); }, {x}), kGradTol);
}

TEST(CudaGradcheck, WhereReductionsMatmulLayout) {
  SKIP_WITHOUT_GPU();
  Rng rng(203);
  Tensor a = off_kink_cuda(Shape{3, 3}, rng), b = off_kink_cuda(Shape{3, 3}, rng);
  Tensor cond = gt(a, b);
  EXPECT_EQ(cond.device(), Device::CUDA);
  EXPECT_LT(gradcheck([cond](const Vars& v) { return ag::where(cond, v[0], v[1]); }, {a, b}), kGradTol);

  Tensor x = off_kink_cuda(Shape{3, 4, 2}, rng);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::sum(v[0]); }, {x}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::mean(v[0]); }, {x}), kGradTol);
  for (int axis = 0; axis < 3; ++axis) {
    EXPECT_LT(gradcheck([axis](const Vars& v) { return ag::sum(v[0], axis); }, {x}), kGradTol) << axis;
    EXPECT_LT(gradcheck([axis](const Vars& v) { return ag::sum(v[0], axis, true); }, {x}), kGradTol) << axis;
    EXPECT_LT(gradcheck([axis](const Vars& v) { return ag::mean(v[0], axis); }, {x}), kGradTol) << axis;
    EXPECT_LT(gradcheck([axis](const Vars& v) { return ag::norm2(v[0], axis); }, {x}), kGradTol) << axis;
  }

  Tensor m = off_kink_cuda(Shape{3, 4}, rng), n = off_kink_cuda(Shape{4, 5}, rng);
  Tensor mt = transpose(m), nt = transpose(n);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::matmul(v[0], v[1]); }, {m, n}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::matmul(v[0], v[1], true, false); }, {mt, n}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::matmul(v[0], v[1], false, true); }, {m, nt}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::matmul(v[0], v[1], true, true); }, {mt, nt}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::transpose(v[0]); }, {m}), kGradTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::reshape(v[0], Shape{2, 6}); }, {m}), kGradTol);
}

TEST(CudaGradcheck, SaeLossAllFourParametersAndDetectsAWrongGradient) {
  SKIP_WITHOUT_GPU();
  // The SAE loss rec + lambda * l1 (model.h) w.r.t. its four parameters, on the GPU; the batch's
  // encoder pre-activations are kept away from the ReLU kink by shifting b_enc.
  Rng rng(204);
  const int64_t n = 6, d = 5, f = 9;
  Tensor x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng, DType::F64);
  Tensor W_enc = normal_tensor(Shape{d, f}, 0.0, 0.5, rng, DType::F64), b_enc = normal_tensor(Shape{f}, 0.0, 0.3, rng, DType::F64);
  Tensor W_dec = normal_tensor(Shape{f, d}, 0.0, 0.3, rng, DType::F64), b_dec = normal_tensor(Shape{d}, 0.0, 0.1, rng, DType::F64);
  for (int attempt = 0; attempt < 100; ++attempt) {
    if (reduce(ReduceOp::min, abs(add(matmul(x, W_enc), b_enc))).item() >= 1e-3) break;
    b_enc = add_scalar(b_enc, 1.7e-3);
  }
  ASSERT_GE(reduce(ReduceOp::min, abs(add(matmul(x, W_enc), b_enc))).item(), 1e-3);
  Tensor x_gpu = cuda64(x);
  auto loss = [x_gpu](const Vars& v) {
    StandardSae model(v[0].data(), v[1].data(), v[2].data(), v[3].data());
    model.W_enc = v[0], model.b_enc = v[1], model.W_dec = v[2], model.b_dec = v[3];
    return model.loss(Variable(x_gpu), 0.7).total;
  };
  EXPECT_LT(gradcheck(loss, {cuda64(W_enc), cuda64(b_enc), cuda64(W_dec), cuda64(b_dec)}), kGradTol);

  // The checker must also fail on the GPU: a "square" whose backward forgets the 2.
  auto wrong_square = [](const Vars& v) {
    Tensor tx = v[0].data();
    return make_result(square(tx), "wrong_square", {v[0]},
                       [tx](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g * tx}; });
  };
  EXPECT_GT(gradcheck(wrong_square, {off_kink_cuda(Shape{4}, rng)}), 1e-2);
}

// ---------------------------------------------------------------- SaeStep: one step, CUDA vs CPU

namespace {
// A batch and model whose encoder pre-activations x W_enc + b_enc are computed exactly in float32
// in any summation order (x: multiples of 1/8 up to 2; W_enc: multiples of 1/64 up to 1/16, so
// every partial sum is a multiple of 1/512 below 2^15) and never 0 (b_enc is an odd multiple of
// 1/1024). So f and the ReLU mask are bitwise equal on both devices, and the comparison measures
// only the rounding of the decoder side, not a mask flipping on a near-zero pre-activation.
struct Problem {
  Tensor x, W_enc, b_enc, W_dec, b_dec;
};

Problem exact_encoder_problem(int64_t n, int64_t d, int64_t f, DType dtype, uint64_t seed) {
  Rng rng(seed);
  auto grid = [&rng](const Shape& s, int64_t half_range, double step) {
    std::vector<double> v(s.numel());
    for (double& x : v) x = (static_cast<double>(rng.below(2 * half_range + 1)) - half_range) * step;
    return Tensor::from_vector(v, s, DType::F64);
  };
  Problem p;
  p.x = grid(Shape{n, d}, 16, 1.0 / 8);
  p.W_enc = grid(Shape{d, f}, 4, 1.0 / 64);
  // Centre the biases at minus one standard deviation of x W_enc: roughly a sixth of f fires.
  const double pre_std = std::sqrt(double(d) * (16.0 * 17.0 / 3.0 / 64.0) * (4.0 * 5.0 / 3.0 / 4096.0));
  std::vector<double> b(f);
  for (double& v : b) v = (std::round(rng.uniform(-2.0, 0.0) * pre_std * 512.0) + 0.5) / 512.0;
  p.b_enc = Tensor::from_vector(b, Shape{f}, DType::F64);
  p.W_dec = normal_tensor(Shape{f, d}, 0.0, 1.0 / std::sqrt(double(f)), rng, DType::F64);
  p.b_dec = normal_tensor(Shape{d}, 0.0, 0.1, rng, DType::F64);
  if (dtype == DType::F32)
    for (Tensor* t : {&p.x, &p.W_enc, &p.b_enc, &p.W_dec, &p.b_dec}) *t = t->to(DType::F32);
  return p;
}

std::unique_ptr<StandardSae> model_on(const Problem& p, Device device) {
  return std::make_unique<StandardSae>(p.W_enc.to(device).clone(), p.b_enc.to(device).clone(),
                                             p.W_dec.to(device).clone(), p.b_dec.to(device).clone());
}

void compare_step(int64_t n, int64_t d, int64_t f, DType dtype, double lambda, uint64_t seed, double rel_f32 = 3e-5) {
  const std::string what = cat("SaeStep ", dtype_name(dtype), " N", n, " D", d, " F", f, " lambda ", lambda, " ",
                               precision_name(matmul_precision()));
  // float32: GEMMs of up to F terms in different orders (OpenBLAS vs cuBLAS). Measured on the CPU,
  // float32 against float64 on these problems: at most 5e-7 of the largest value (1.5e-6 for b_enc
  // at N = 4096), so 3e-5 leaves a wide margin for two float32 orders and still sees any real slip.
  const double rel = dtype == DType::F32 ? rel_f32 : 1e-11;
  Problem p = exact_encoder_problem(n, d, f, dtype, seed);
  auto cpu_model = model_on(p, Device::CPU), gpu_model = model_on(p, Device::CUDA);
  SaeStep cpu_step = sae::testing::standard_step(n + 3, d, f, dtype, Device::CPU);
  SaeStep gpu_step = sae::testing::standard_step(n + 3, d, f, dtype, Device::CUDA);
  for (Variable& param : gpu_model->parameters())  // the step must overwrite every gradient
    param.grad() = Tensor::full(param.shape(), kNaN, dtype, Device::CUDA);
  const StepSums cpu = fused_backward(cpu_step, *cpu_model, p.x, lambda);
  const StepSums gpu = fused_backward(gpu_step, *gpu_model, on_gpu(p.x), lambda);

  EXPECT_EQ(gpu.tokens, n) << what;
  EXPECT_EQ(gpu.active, cpu.active) << what;  // the mask is exact by construction
  EXPECT_GT(cpu.active, 0.02 * double(n * f)) << what;
  EXPECT_LT(cpu.active, 0.6 * double(n * f)) << what;
  EXPECT_NEAR(gpu.rec, cpu.rec, rel * std::abs(cpu.rec)) << what << " rec";
  EXPECT_NEAR(gpu.l1, cpu.l1, rel * std::abs(cpu.l1)) << what << " l1";
  EXPECT_NEAR(gpu.loss, cpu.loss, rel * std::abs(cpu.loss)) << what << " loss";
  EXPECT_EQ(gpu_step.features().device(), Device::CUDA);
  expect_close(gpu_step.features(), cpu_step.features(), kExact, what + " features");
  expect_close(gpu_step.feature_counts(), cpu_step.feature_counts(), kExact, what + " feature counts");
  expect_close_to_scale(gpu_step.reconstruction(), cpu_step.reconstruction(), rel, what + " reconstruction");
  auto cpu_params = cpu_model->named_parameters(), gpu_params = gpu_model->named_parameters();
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    const Tensor& got = gpu_params[i].second.grad();
    ASSERT_TRUE(got.defined()) << what << " " << gpu_params[i].first;
    EXPECT_EQ(got.device(), Device::CUDA);
    expect_close_to_scale(got, cpu_params[i].second.grad(), rel, what + " grad " + cpu_params[i].first);
  }

  // A second step on the same input reproduces every gradient bit for bit (no atomics).
  std::vector<Tensor> first;
  for (auto& [name, param] : gpu_params) first.push_back(param.grad().to(Device::CPU));
  const StepSums again = fused_backward(gpu_step, *gpu_model, on_gpu(p.x), lambda);
  EXPECT_EQ(again.rec, gpu.rec) << what;
  EXPECT_EQ(again.l1, gpu.l1) << what;
  for (size_t i = 0; i < first.size(); ++i)
    expect_close(gpu_params[i].second.grad(), first[i], kExact, what + " repeated grad " + gpu_params[i].first);

  // Forward only agrees with the forward of forward_backward.
  const StepSums fwd = gpu_step.forward(gpu_model->params(), on_gpu(p.x), lambda);
  EXPECT_EQ(fwd.rec, gpu.rec) << what;
  EXPECT_EQ(fwd.active, gpu.active) << what;
}
}  // namespace

TEST(CudaSaeStep, OneStoryAtTheStudyWidthMatchesCpu) {
  SKIP_WITHOUT_GPU();
  compare_step(218, 768, 10000, DType::F32, 5.0, 1);
}

TEST(CudaSaeStep, SmallCasesMatchCpu) {
  SKIP_WITHOUT_GPU();
  compare_step(7, 6, 11, DType::F32, 0.5, 2);
  compare_step(7, 6, 11, DType::F64, 0.5, 3);
  compare_step(40, 16, 300, DType::F64, 3.0, 4);
  compare_step(1100, 24, 333, DType::F32, 0.0, 5);  // lambda = 0; rows split into slices
  compare_step(1100, 24, 333, DType::F64, 2.0, 6);
}

TEST(CudaSaeStep, Bf16AndTf32StepsMatchTheCpuReferenceStep) {
  SKIP_WITHOUT_GPU();
  // The problem's x and W_enc are bfloat16 values (exact_encoder_problem: multiples of 1/8 and 1/64
  // with a few bits), so the pre-activations and the ReLU mask are exact at every precision. What the
  // GPU may round differently: dL/dx_hat = 2 (x_hat - x) enters the backward GEMMs rounded, and the
  // GPU's x_hat differs from the CPU's in the last float32 bits, so now and then one element lands
  // on the other side of a bfloat16 rounding boundary and moves one term by 2^-8 of itself. 2e-3
  // of the largest value covers that (float32's 3e-5 would not); tf32 (cuBLAS may truncate where
  // the CPU rounds): 5e-3.
  {
    const ScopedMatmulPrecision bf16(Precision::BF16);
    compare_step(218, 768, 10000, DType::F32, 5.0, 11, 2e-3);
    compare_step(1100, 24, 333, DType::F32, 2.0, 12, 2e-3);
  }
  {
    const ScopedMatmulPrecision tf32(Precision::TF32);
    compare_step(218, 768, 10000, DType::F32, 5.0, 13, 5e-3);
  }
}

TEST(CudaSaeStep, AgreesWithTheAutogradReferenceOnTheGpu) {
  SKIP_WITHOUT_GPU();
  // The fused path's own reference (model.h's autograd loss), both on the GPU, float64.
  const double lambda = 1.5;
  Problem p = exact_encoder_problem(30, 12, 50, DType::F64, 7);
  auto fused = model_on(p, Device::CUDA), reference = model_on(p, Device::CUDA);
  Tensor x = on_gpu(p.x);
  auto loss = reference->loss(Variable(x), lambda);
  loss.total.backward();
  SaeStep step = sae::testing::standard_step(30, 12, 50, DType::F64, Device::CUDA);
  const StepSums sums = fused_backward(step, *fused, x, lambda);
  EXPECT_NEAR(sums.rec, loss.rec.data().item(), 1e-10 * std::abs(sums.rec));
  EXPECT_NEAR(sums.l1, loss.l1.data().item(), 1e-10 * std::abs(sums.l1));
  auto ref_params = reference->named_parameters(), fused_params = fused->named_parameters();
  for (size_t i = 0; i < ref_params.size(); ++i)
    expect_close_to_scale(fused_params[i].second.grad(), ref_params[i].second.grad(), 1e-11,
                          "fused vs autograd on the GPU: " + ref_params[i].first);
}

// ---------------------------------------------------------------- training: CUDA vs CPU trajectory

namespace {
// metrics.csv as column name -> values, one per logged row.
std::map<std::string, std::vector<double>> read_metrics(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::string line;
  std::getline(in, line);
  std::vector<std::string> names;
  {
    std::stringstream header(line);
    std::string name;
    while (std::getline(header, name, ',')) names.push_back(name);
  }
  std::map<std::string, std::vector<double>> columns;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::stringstream row(line);
    std::string cell;
    for (size_t i = 0; i < names.size() && std::getline(row, cell, ','); ++i) columns[names[i]].push_back(std::stod(cell));
  }
  return columns;
}

TrainConfig small_synthetic_run() {
  TrainConfig c = sae::testing::small_synthetic_config("");
  c.features = 96;
  c.lr = 1e-3;
  c.l1 = 0.1;
  c.steps = 200;
  c.checkpoint_every = 100;  // one checkpoint mid-run: the device path of training_state() too
  return c;
}

// Trains `config` on the CPU and on CUDA and compares the loss curves and the final weights. The
// batches are the same (the data does not depend on the device; the GPU's generator, --device-data
// auto, differs from the CPU's in a rare last bit: tests/sae/data/test_device_data.cpp), so the
// runs differ only by float32 rounding in another summation order, carried through the Adam steps. Measured on the CPU for these
// configurations, float32 against float64 (a larger difference than two float32 orders): losses
// within 6e-7 relative and final weights within 4e-7 relative (Frobenius) after 200 steps, and a
// 1e-5 relative nudge of the initial weights stays at 1e-5. So 1e-4 leaves a wide margin.
void compare_cpu_and_cuda_training(TrainConfig config, int64_t logged_rows) {
  constexpr double kRel = 1e-4;
  sae::testing::TempDir tmp("cuda_train");
  config.device = DeviceChoice::Cpu;
  config.out = tmp.str("cpu");
  const TrainResult cpu = train(config);
  config.device = DeviceChoice::Cuda;
  config.out = tmp.str("cuda");
  const TrainResult gpu = train(config);
  EXPECT_EQ(cpu.device, Device::CPU);
  EXPECT_EQ(gpu.device, Device::CUDA);
  EXPECT_EQ(gpu.steps, config.steps);
  EXPECT_EQ(gpu.tokens, cpu.tokens);
  if (config.checkpoint_every < config.steps) {  // written from device tensors mid-run
    EXPECT_TRUE(std::filesystem::exists(cat(config.out, "/checkpoints/step_", config.checkpoint_every,
                                            "/training_state.safetensors")));
  }

  auto cpu_rows = read_metrics(cpu.metrics_csv), gpu_rows = read_metrics(gpu.metrics_csv);
  ASSERT_EQ(cpu_rows["step"].size(), static_cast<size_t>(logged_rows));
  ASSERT_EQ(gpu_rows["step"], cpu_rows["step"]);
  EXPECT_EQ(gpu_rows["tokens"], cpu_rows["tokens"]);
  // Same data; on the GPU (--device-data auto) made and summed there, in another order.
  for (size_t i = 0; i < cpu_rows["raw_mean"].size(); ++i)
    EXPECT_NEAR(gpu_rows["raw_mean"][i], cpu_rows["raw_mean"][i], 1e-12 * std::abs(cpu_rows["raw_mean"][i]) + 1e-15);
  for (const char* column : {"loss", "rec_loss", "l1", "loss_per_element", "rec_loss_per_element",
                             "l1_per_element", "fvu", "reconstructed_std"}) {
    const auto& want = cpu_rows[column];
    const auto& got = gpu_rows[column];
    ASSERT_EQ(got.size(), want.size()) << column;
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got[i], want[i], kRel * std::abs(want[i]) + 1e-12) << column << " at step " << cpu_rows["step"][i];
  }
  for (size_t i = 0; i < cpu_rows["l0"].size(); ++i)  // a feature near its threshold may flip
    EXPECT_NEAR(gpu_rows["l0"][i], cpu_rows["l0"][i], 0.01 * cpu_rows["l0"][i] + 0.05)
        << "l0 at step " << cpu_rows["step"][i];
  EXPECT_LT(cpu_rows["loss"].back(), 0.8 * cpu_rows["loss"].front());  // training moved

  // Final weights, read back from the SAELens files: relative Frobenius distance per tensor.
  expect_same_saved_weights(cpu.model_dir, gpu.model_dir, kRel);
}
}  // namespace

TEST(CudaTraining, TokenBatchesFollowTheCpuTrajectoryFor200Steps) {
  SKIP_WITHOUT_GPU();
  compare_cpu_and_cuda_training(small_synthetic_run(), 20);
}

TEST(CudaTraining, StoryBatchesFollowTheCpuTrajectory) {
  SKIP_WITHOUT_GPU();
  // The study's mode: one story per step (N varies from step to step), per-story normalisation.
  TrainConfig config = small_synthetic_run();
  config.synthetic.stories = 300;
  config.batch_tokens = 0;
  config.normalize = Normalization::Story;
  config.steps = 100;
  compare_cpu_and_cuda_training(config, 10);
}
