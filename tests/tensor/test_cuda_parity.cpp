// CUDA parity: every kernel of the op list (tensor/op_list.h) on random inputs, CUDA against the CPU
// reference, in float32 and float64, with |cuda - cpu| <= atol + rtol * |cpu|. Sizes include 1, 7,
// non-multiples of the block sizes and tensors larger than one grid-stride sweep. Every CUDA output
// is filled with NaN before the kernel writes it. Also: copies, the caching allocator, TF32 and the
// out-of-memory error (bf16 GEMMs: test_precision.cpp). Every test skips when no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "tensor/cuda/backend.h"
#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tensor/rng.h"
#include "tests/util/compare.h"
#include "tests/util/gpu.h"

using namespace sae;
using sae::testing::Tolerance;
using sae::testing::kExact;
using sae::testing::expect_close;
using sae::testing::random_cpu;
using sae::testing::quantized_cpu;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const DType kDTypes[] = {DType::F32, DType::F64};

// Element-wise kernels round like the CPU ones (the CUDA build passes --fmad=false); the slack
// covers the GPU's exp and log, which may differ by an ulp or two.
Tolerance elementwise_tol(DType d) { return d == DType::F32 ? Tolerance{1e-7, 1e-6} : Tolerance{1e-15, 1e-13}; }
// Both devices accumulate in double; only the summation order differs (float32 results may then
// round to neighbouring floats; float64 sums of a million signed terms may differ near 1e-12).
Tolerance reduce_tol(DType d) { return d == DType::F32 ? Tolerance{1e-6, 1e-6} : Tolerance{1e-10, 1e-12}; }


// A CUDA result against its CPU reference (testing::expect_close), checking that it stayed on the GPU.
void expect_gpu_close(const Tensor& got, const Tensor& ref, Tolerance tol, const std::string& what) {
  ASSERT_EQ(got.device(), Device::CUDA) << what;
  expect_close(got, ref, tol, what);
}

std::string label(const char* op, DType d, const Shape& s) { return cat(op, " ", dtype_name(d), s.str()); }



Tensor poisoned(const Shape& shape, DType d) { return Tensor::full(shape, kNaN, d, Device::CUDA); }

Tensor on_gpu(const Tensor& t) { return t.to(Device::CUDA); }

const KernelTable& gpu() { return cuda_kernels(); }

// Element counts 0, 1, 7, 1000, 945, 4099 and 1048575 (more than one grid-stride sweep).
std::vector<Shape> elementwise_shapes() {
  return {Shape{0}, Shape{1}, Shape{7}, Shape{8, 125}, Shape{3, 5, 7, 9}, Shape{4099}, Shape{1025, 1023}};
}

}  // namespace

TEST(CudaParity, CopiesRoundTripAndConvert) {
  SKIP_WITHOUT_GPU();
  Rng rng(1);
  for (DType d : kDTypes) {
    for (const Shape& s : elementwise_shapes()) {
      Tensor x = random_cpu(s, d, rng);
      Tensor g = on_gpu(x);
      EXPECT_EQ(g.device(), Device::CUDA);
      expect_gpu_close(on_gpu(g.to(Device::CPU)), x, kExact, label("host round trip", d, s));
      Tensor c = poisoned(s, d);
      copy_(c, g);  // device to device, same dtype
      expect_gpu_close(c, x, kExact, label("copy", d, s));
      const DType other = d == DType::F32 ? DType::F64 : DType::F32;
      Tensor converted = poisoned(s, other);
      copy_(converted, g);  // f32 <-> f64 on the device
      Tensor ref = Tensor::empty(s, other);
      copy_(ref, x);
      expect_gpu_close(converted, ref, kExact, label("convert", d, s));
      expect_gpu_close(g.clone(), x, kExact, label("clone", d, s));
    }
    // Views: rows of a larger tensor as input and output, and overlapping source and destination.
    Tensor x = random_cpu(Shape{9, 33}, d, rng);
    Tensor g = on_gpu(x);
    expect_gpu_close(neg(g.slice_rows(2, 7)), neg(x.slice_rows(2, 7)), kExact, label("neg of row view", d, x.shape()));
    Tensor x_rows = x.slice_rows(0, 6), g_rows = g.slice_rows(0, 6);
    copy_(x_rows, x.slice_rows(3, 9));  // CPU: memmove
    copy_(g_rows, g.slice_rows(3, 9));
    expect_gpu_close(g, x, kExact, label("overlapping copy", d, x.shape()));
  }
}

TEST(CudaParity, Fill) {
  SKIP_WITHOUT_GPU();
  for (DType d : kDTypes)
    for (const Shape& s : elementwise_shapes()) {
      Tensor g = poisoned(s, d);
      fill_(g, 0.3);  // not exact in binary: the f32 cast must match too
      expect_gpu_close(g, Tensor::full(s, 0.3, d), kExact, label("fill", d, s));
    }
}

TEST(CudaParity, UnaryOps) {
  SKIP_WITHOUT_GPU();
  Rng rng(2);
  for (DType d : kDTypes) {
    for (const Shape& s : elementwise_shapes()) {
      for (int i = 0; i < static_cast<int>(UnaryOp::count); ++i) {
        const UnaryOp op = static_cast<UnaryOp>(i);
        // sqrt and log also see zeros and negatives: the infinities and NaNs must match too.
        Tensor x = op == UnaryOp::exp   ? random_cpu(s, d, rng, -10.0, 10.0)
                   : op == UnaryOp::sqrt || op == UnaryOp::log ? random_cpu(s, d, rng, -0.5, 4.0)
                                                               : random_cpu(s, d, rng);
        Tensor g = poisoned(s, d);
        unary_(op, g, on_gpu(x));
        expect_gpu_close(g, unary(op, x), elementwise_tol(d), label(op_name(op), d, s));
      }
    }
  }
}

TEST(CudaParity, BinaryOpsWithBroadcasting) {
  SKIP_WITHOUT_GPU();
  const std::vector<std::pair<Shape, Shape>> cases = {
      {Shape{1}, Shape{1}},             {Shape{4099}, Shape{4099}},          {Shape{7, 1000}, Shape{1000}},
      {Shape{7, 1000}, Shape{7, 1}},    {Shape{1}, Shape{3, 5, 7}},          {Shape{3, 1, 7}, Shape{1, 5, 1}},
      {Shape{2, 3, 1, 9}, Shape{3, 4, 1}}, {Shape{1025, 1023}, Shape{1023}}, {Shape{1025, 1023}, Shape{1025, 1023}},
      {Shape{1, 1023}, Shape{1025, 1}}, {Shape{0, 5}, Shape{5}}};
  Rng rng(3);
  for (DType d : kDTypes) {
    for (const auto& [sa, sb] : cases) {
      for (int i = 0; i < static_cast<int>(BinaryOp::count); ++i) {
        const BinaryOp op = static_cast<BinaryOp>(i);
        const bool arithmetic = op == BinaryOp::add || op == BinaryOp::sub || op == BinaryOp::mul;
        Tensor a = arithmetic || op == BinaryOp::div ? random_cpu(sa, d, rng) : quantized_cpu(sa, d, rng);
        Tensor b = op == BinaryOp::div ? random_cpu(sb, d, rng, 0.5, 2.0, false)
                   : arithmetic       ? random_cpu(sb, d, rng)
                                      : quantized_cpu(sb, d, rng);
        Tensor ref = binary(op, a, b);
        Tensor g = poisoned(ref.shape(), d);
        binary_(op, g, on_gpu(a), on_gpu(b));
        expect_gpu_close(g, ref, elementwise_tol(d), cat(op_name(op), " ", dtype_name(d), sa.str(), " with ", sb.str()));
      }
    }
    // In place, output aliasing the first operand (gradient accumulation).
    Tensor acc = random_cpu(Shape{33, 65}, d, rng), x = random_cpu(Shape{65}, d, rng);
    Tensor g = on_gpu(acc);
    add_(g, on_gpu(x));
    add_(acc, x);
    expect_gpu_close(g, acc, elementwise_tol(d), label("add_ in place", d, acc.shape()));
  }
}

TEST(CudaParity, AffineAndWhere) {
  SKIP_WITHOUT_GPU();
  Rng rng(4);
  for (DType d : kDTypes) {
    for (const Shape& s : elementwise_shapes()) {
      Tensor x = random_cpu(s, d, rng);
      Tensor g = poisoned(s, d);
      affine_(g, on_gpu(x), 1.7, -0.3);
      expect_gpu_close(g, affine(x, 1.7, -0.3), elementwise_tol(d), label("affine", d, s));
      Tensor in_place = on_gpu(x);
      affine_(in_place, in_place, -0.5, 2.0);
      expect_gpu_close(in_place, affine(x, -0.5, 2.0), elementwise_tol(d), label("affine in place", d, s));

      Tensor cond = quantized_cpu(s, d, rng), a = random_cpu(s, d, rng), b = random_cpu(s, d, rng);
      Tensor w = poisoned(s, d);
      gpu().where(w, on_gpu(cond), on_gpu(a), on_gpu(b));
      expect_gpu_close(w, where(cond, a, b), kExact, label("where", d, s));
    }
  }
}

TEST(CudaParity, ReduceAll) {
  SKIP_WITHOUT_GPU();
  // 2048/2049 straddle the one-warp / split-across-blocks switch.
  const std::vector<int64_t> sizes = {0, 1, 7, 1000, 2048, 2049, 4099, 50000, 1048579};
  Rng rng(5);
  for (DType d : kDTypes) {
    for (int64_t n : sizes) {
      Tensor x = random_cpu(Shape{n}, d, rng);
      Tensor g_x = on_gpu(x);
      for (int i = 0; i < static_cast<int>(ReduceOp::count); ++i) {
        const ReduceOp op = static_cast<ReduceOp>(i);
        if (n == 0 && (op == ReduceOp::max || op == ReduceOp::min || op == ReduceOp::mean)) continue;  // front-end error
        Tensor g = poisoned(Shape{1}, d);
        gpu().reduce_all(op, g, g_x);
        expect_gpu_close(g, reduce(op, x), reduce_tol(d), label(op_name(op), d, x.shape()));
        // No atomics: the same input gives the same bits every time.
        Tensor again = poisoned(Shape{1}, d);
        gpu().reduce_all(op, again, g_x);
        expect_gpu_close(again, g.to(Device::CPU), kExact, label(op_name(op), d, x.shape()) + " repeated");
      }
    }
  }
}

TEST(CudaParity, ReduceAxis) {
  SKIP_WITHOUT_GPU();
  // inner == 1 with short rows (a warp each) and long rows (blocks, split or not); inner > 1 with
  // many and few columns (split down len); tiny inner; empty axis and empty output.
  const std::vector<std::pair<Shape, int>> cases = {
      {Shape{1000}, 0},      {Shape{7, 1000}, 1},  {Shape{7, 1000}, 0},   {Shape{3, 4099}, 1},
      {Shape{4099, 3}, 0},   {Shape{2, 50000}, 1}, {Shape{50000, 2}, 0},  {Shape{300, 5000}, 1},
      {Shape{64, 3000}, 0},  {Shape{5, 3000, 2}, 1}, {Shape{4, 5, 6, 7}, 0}, {Shape{4, 5, 6, 7}, 1},
      {Shape{4, 5, 6, 7}, 2}, {Shape{4, 5, 6, 7}, 3}, {Shape{2000, 1100}, 0}, {Shape{2000, 1100}, 1},
      {Shape{3, 0, 4}, 1},   {Shape{0, 4}, 1}};
  Rng rng(6);
  for (DType d : kDTypes) {
    for (const auto& [s, axis] : cases) {
      Tensor x = random_cpu(s, d, rng);
      Tensor g_x = on_gpu(x);
      for (int i = 0; i < static_cast<int>(ReduceOp::count); ++i) {
        const ReduceOp op = static_cast<ReduceOp>(i);
        Shape out_shape;
        for (int k = 0; k < s.ndim; ++k)
          if (k != axis) out_shape[out_shape.ndim++] = s[k];
        if (out_shape.ndim == 0) out_shape = Shape{1};
        // reduce_axis_ directly (not reduce()), so empty axes reach the kernels for every op.
        Tensor ref = Tensor::empty(out_shape, d);
        reduce_axis_(op, ref, x, axis);
        Tensor g = poisoned(out_shape, d);
        reduce_axis_(op, g, g_x, axis);
        expect_gpu_close(g, ref, reduce_tol(d), cat(op_name(op), " ", dtype_name(d), s.str(), " axis ", axis));
      }
    }
  }
}

TEST(CudaParity, ReductionsPropagateNaN) {
  SKIP_WITHOUT_GPU();
  Rng rng(7);
  for (DType d : kDTypes) {
    for (const Shape& s : {Shape{7, 5000}, Shape{300, 7}, Shape{3, 40}}) {
      std::vector<double> v = random_cpu(s, d, rng).to_vector();
      v[v.size() / 3] = kNaN;
      Tensor x = Tensor::from_vector(v, s, d), g_x = on_gpu(x);
      for (int i = 0; i < static_cast<int>(ReduceOp::count); ++i) {
        const ReduceOp op = static_cast<ReduceOp>(i);
        Tensor all = poisoned(Shape{1}, d);
        gpu().reduce_all(op, all, g_x);
        expect_gpu_close(all, reduce(op, x), reduce_tol(d), label(op_name(op), d, s) + " with a NaN");
        for (int axis = 0; axis < 2; ++axis) {
          Tensor g = poisoned(Shape{s[1 - axis]}, d);
          reduce_axis_(op, g, g_x, axis);
          expect_gpu_close(g, reduce(op, x, axis), reduce_tol(d),
                       cat(op_name(op), " ", dtype_name(d), s.str(), " axis ", axis, " with a NaN"));
        }
      }
    }
  }
}

TEST(CudaParity, MatmulAllTransposeFlagsAlphaBeta) {
  SKIP_WITHOUT_GPU();
  struct Dims {
    int64_t m, k, n;
  };
  const std::vector<Dims> dims = {{1, 1, 1}, {7, 13, 5}, {64, 300, 33}, {129, 257, 65}, {3, 0, 4}, {0, 5, 3}, {5, 4, 0}};
  const std::vector<std::pair<double, double>> scalars = {{1.0, 0.0}, {0.5, 0.0}, {-1.5, 2.0}, {1.0, 1.0}};
  Rng rng(8);
  for (DType d : kDTypes) {
    for (const Dims& dm : dims) {
      const Tolerance tol = d == DType::F32 ? Tolerance{1e-6 * (dm.k + 8), 1e-5} : Tolerance{1e-14 * (dm.k + 8), 1e-12};
      for (int flags = 0; flags < 4; ++flags) {
        const bool ta = flags & 1, tb = flags & 2;
        Tensor a = random_cpu(ta ? Shape{dm.k, dm.m} : Shape{dm.m, dm.k}, d, rng, -1.0, 1.0);
        Tensor b = random_cpu(tb ? Shape{dm.n, dm.k} : Shape{dm.k, dm.n}, d, rng, -1.0, 1.0);
        for (const auto& [alpha, beta] : scalars) {
          const Shape os{dm.m, dm.n};
          Tensor start = random_cpu(os, d, rng);
          Tensor ref = start.clone();
          matmul_(ref, a, ta, b, tb, alpha, beta);
          // With beta == 0 the output is not read: NaN there must not leak into the result.
          Tensor g = beta == 0.0 ? poisoned(os, d) : on_gpu(start);
          matmul_(g, on_gpu(a), ta, on_gpu(b), tb, alpha, beta);
          expect_gpu_close(g, ref, tol,
                       cat("matmul ", dtype_name(d), " m", dm.m, " k", dm.k, " n", dm.n, " ta", ta, " tb", tb, " alpha ",
                           alpha, " beta ", beta));
        }
      }
    }
  }
}

TEST(CudaParity, MatmulTf32IsOptIn) {
  SKIP_WITHOUT_GPU();
  // Random products: within TF32's rounding at --precision tf32, within float32's at fp32.
  Rng rng(9);
  Tensor a = random_cpu(Shape{128, 512}, DType::F32, rng, -1.0, 1.0);
  Tensor b = random_cpu(Shape{512, 64}, DType::F32, rng, -1.0, 1.0);
  Tensor ref = matmul(a, b);
  {
    const ScopedMatmulPrecision tf32(Precision::TF32);
    expect_gpu_close(matmul(on_gpu(a), on_gpu(b)), ref, Tolerance{5e-2, 1e-2}, "matmul tf32");
  }
  expect_gpu_close(matmul(on_gpu(a), on_gpu(b)), ref, Tolerance{1e-6 * 520, 1e-5}, "matmul f32 after tf32");
  // A product whose float32 and TF32 results are known exactly: every a = 1 + 2^-12 (a float32, but
  // a quarter of TF32's last mantissa bit at 1, so TF32 reads it as 1, rounding or truncating), every
  // b = 1, k = 512: each partial sum of m terms is m (1 + 2^-12), exact in float32 for m <= 2048, so
  // the float32 result is 512.125 in any summation order and the TF32 result 512. TF32 math allows
  // cuBLAS tensor cores but does not force them (its heuristics may pick a float32 kernel for a
  // shape), so at tf32 each element is one of the two; at fp32 it must be 512.125.
  const Tensor ones_a = Tensor::full(Shape{128, 512}, 1.0 + std::ldexp(1.0, -12)), ones_b = Tensor::full(Shape{512, 64}, 1.0);
  {
    const ScopedMatmulPrecision tf32(Precision::TF32);
    const std::vector<double> got = matmul(on_gpu(ones_a), on_gpu(ones_b)).to_vector();
    int64_t rounded = 0, other = 0;
    for (double v : got) {
      rounded += v == 512.0;
      other += v != 512.0 && v != 512.125;
    }
    EXPECT_EQ(other, 0) << "tf32: every element is 512 (TF32 inputs) or 512.125 (float32 inputs)";
    std::printf("tf32 matmul: %lld of %zu elements from TF32 inputs\n", (long long)rounded, got.size());
  }
  expect_gpu_close(matmul(on_gpu(ones_a), on_gpu(ones_b)), Tensor::full(Shape{128, 64}, 512.125), kExact,
                   "fp32 again: float32 inputs");
}

// The encoder GEMM of a TopK SAE at 2^20 latents and 4096 tokens: an output of 2^32 elements, whose
// offsets pass int32 inside cuBLAS (each size fits an int; nothing else of ours reaches cuBLAS at this
// size). Sampled entries, rows on both sides of 2^31 and 2^32 elements, against double dot products
// of the operands rounded as the precision rounds them; the output starts as NaN. 16 GiB of GPU memory.
TEST(CudaParity, MatmulWithAnOutputOf2To32Elements) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 4096, d = 64, f = int64_t(1) << 20;
  Rng rng(11);
  const Tensor x = random_cpu(Shape{n, d}, DType::F32, rng), w = random_cpu(Shape{d, f}, DType::F32, rng);
  const std::vector<double> xs = x.to_vector(), ws = w.to_vector();  // float32 values, exactly
  const Tensor xg = on_gpu(x), wg = on_gpu(w);
  for (const Precision precision : {Precision::FP32, Precision::BF16}) {
    const ScopedMatmulPrecision scoped(precision);
    Tensor out = poisoned(Shape{n, f}, DType::F32);
    matmul_(out, xg, false, wg, false);
    for (const int64_t row : {int64_t(0), int64_t(2047), int64_t(2048), int64_t(4095)})
      for (const int64_t col : {int64_t(0), int64_t(1), int64_t(123457), f - 2, f - 1}) {
        double want = 0, scale = 0;
        for (int64_t k = 0; k < d; ++k) {
          const double a = round_to_precision(float(xs[row * d + k]), precision);
          const double b = round_to_precision(float(ws[k * f + col]), precision);
          want += a * b;
          scale += std::fabs(a * b);
        }
        const double got = out.slice_rows(row, row + 1).to(Device::CPU).to_vector()[col];
        EXPECT_NEAR(got, want, 1e-5 * scale + 1e-7) << precision_name(precision) << " row " << row << " col " << col;
      }
  }
}

// A TopK SAE at 2^20 latents and d 2304: its weights hold 2304 x 2^20 = 2.4e9 elements, past int32,
// while each GEMM size fits an int. The three products the dense steps make with such a weight --
// x W_enc [n, F], f W_dec [n, d] (k = 2^20) and the encoder gradient x^T dP [d, F] (an output past
// 2^31 elements) -- sampled at rows and columns on both sides of 2^31 elements, against double dot
// products. Every value is an integer over 64 in [-2, 2), exact in bf16, so one expectation serves
// fp32 and bf16. About 30 GiB of GPU memory and 10 GiB of host memory.
namespace {
void expect_products_with_a_large_weight(int64_t f, Device device) {
  const int64_t n = 64, d = 2304;
  const auto value = [](int64_t i, int64_t salt) {  // a cheap hash of the flat index
    const uint64_t h = (uint64_t(i) * 0x9E3779B97F4A7C15ull + uint64_t(salt)) >> 56;
    return float(int64_t(h) - 128) / 64.0f;
  };
  std::vector<float> host(size_t(d * f));
  for (int64_t i = 0; i < d * f; ++i) host[size_t(i)] = value(i, 1);
  const Tensor w = Tensor::from_data(host.data(), Shape{d, f}, device);  // W_enc [d, F]
  const Tensor w_dec = w.reshape(Shape{f, d});                                  // the same bytes as [F, d]
  std::vector<float> xs(size_t(n * d)), ps(size_t(n * f));
  for (int64_t i = 0; i < n * d; ++i) xs[size_t(i)] = value(i, 2);
  for (int64_t i = 0; i < n * f; ++i) ps[size_t(i)] = value(i, 3);
  const Tensor x = Tensor::from_data(xs.data(), Shape{n, d}, device);
  const Tensor p = Tensor::from_data(ps.data(), Shape{n, f}, device);
  std::vector<int64_t> latents = {f - 2, f - 1};
  for (const int64_t col : {int64_t(0), int64_t(1), int64_t(123457), (int64_t(1) << 31) / d})
    if (col < f - 2) latents.push_back(col);
  const auto read = [](const Tensor& t, int64_t row, int64_t col) {
    return t.slice_rows(row, row + 1).to(Device::CPU).to_vector()[size_t(col)];
  };
  // got against sum_k a(k) b(k) over `terms` products, in double.
  const auto expect_dot = [](double got, int64_t terms, const auto& a, const auto& b, const std::string& what) {
    double want = 0, scale = 0;
    for (int64_t k = 0; k < terms; ++k) {
      want += double(a(k)) * b(k);
      scale += std::fabs(double(a(k)) * b(k));
    }
    EXPECT_NEAR(got, want, 1e-5 * scale + 1e-7) << what;
  };
  for (const Precision precision : {Precision::FP32, Precision::BF16}) {
    const ScopedMatmulPrecision scoped(precision);
    const std::string at = precision_name(precision);
    Tensor encoded = Tensor::full(Shape{n, f}, kNaN, DType::F32, device);  // x W_enc
    matmul_(encoded, x, false, w, false);
    Tensor decoded = Tensor::full(Shape{n, d}, kNaN, DType::F32, device);  // p W_dec, sums of F products
    matmul_(decoded, p, false, w_dec, false);
    Tensor gradient = Tensor::full(Shape{d, f}, kNaN, DType::F32, device);  // x^T p: 2.4e9 elements at 2^20
    matmul_(gradient, x, true, p, false);
    for (const int64_t t : {int64_t(0), n - 1}) {
      for (const int64_t i : latents)
        expect_dot(read(encoded, t, i), d, [&](int64_t k) { return xs[size_t(t * d + k)]; },
                   [&](int64_t k) { return host[size_t(k * f + i)]; }, cat(at, " x W_enc ", t, ", ", i));
      for (const int64_t j : {int64_t(0), int64_t(1000), d - 1})
        expect_dot(read(decoded, t, j), f, [&](int64_t k) { return ps[size_t(t * f + k)]; },
                   [&](int64_t k) { return host[size_t(k * d + j)]; }, cat(at, " f W_dec ", t, ", ", j));
    }
    for (const int64_t j : {int64_t(0), int64_t(1000), d - 1})
      for (const int64_t i : latents)
        expect_dot(read(gradient, j, i), n, [&](int64_t t) { return xs[size_t(t * d + j)]; },
                   [&](int64_t t) { return ps[size_t(t * f + i)]; }, cat(at, " x^T dP ", j, ", ", i));
  }
}
}  // namespace

TEST(CudaParity, MatmulWithAWeightOfMoreThan2To31Elements) {
  SKIP_WITHOUT_GPU();
  expect_products_with_a_large_weight(int64_t(1) << 20, Device::CUDA);
}

// The same checks at 4096 latents on the CPU: the expectations themselves are right.
TEST(CudaParity, LargeWeightProductsCheckedOnTheCpuAtFewLatents) {
  expect_products_with_a_large_weight(4096, Device::CPU);
}

TEST(CudaParity, Transpose) {
  SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {Shape{1, 1}, Shape{7, 1000}, Shape{1000, 7}, Shape{33, 65},
                                     Shape{4099, 1}, Shape{1, 4099}, Shape{0, 5}, Shape{1025, 1023}};
  Rng rng(10);
  for (DType d : kDTypes)
    for (const Shape& s : shapes) {
      Tensor x = random_cpu(s, d, rng);
      Tensor g = poisoned(Shape{s[1], s[0]}, d);
      gpu().transpose(g, on_gpu(x));
      expect_gpu_close(g, transpose(x), kExact, label("transpose", d, s));
    }
}

TEST(CudaParity, AdamStepsMatchCpu) {
  SKIP_WITHOUT_GPU();
  Rng rng(11);
  for (DType d : kDTypes) {
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(4099), int64_t(1048579)}) {
      for (double wd : {0.0, 0.01}) {
        const Shape s{n};
        Tensor p = random_cpu(s, d, rng), m = Tensor::zeros(s, d), v = Tensor::zeros(s, d);
        Tensor gp = on_gpu(p), gm = on_gpu(m), gv = on_gpu(v);
        AdamScalars sc;
        sc.lr = 1e-2;
        sc.weight_decay = wd;
        for (int step = 1; step <= 5; ++step) {
          sc.step = step;
          Tensor grad = random_cpu(s, d, rng);
          adam_step_(p, m, v, grad, sc);
          adam_step_(gp, gm, gv, on_gpu(grad), sc);
          const std::string what = cat("adam ", dtype_name(d), s.str(), " wd ", wd, " step ", step);
          expect_gpu_close(gp, p, elementwise_tol(d), what + " param");
          expect_gpu_close(gm, m, elementwise_tol(d), what + " m");
          expect_gpu_close(gv, v, elementwise_tol(d), what + " v");
        }
      }
    }
  }
}

TEST(CudaAllocator, ReusesFreedBlocks) {
  SKIP_WITHOUT_GPU();
  const char* exact = std::getenv("SAE_CUDA_EXACT_ALLOC");
  if (exact && std::string(exact) == "1") GTEST_SKIP() << "SAE_CUDA_EXACT_ALLOC=1: nothing is cached";
  const size_t in_use_before = cuda_bytes_in_use();
  const void* small_block = nullptr;
  {
    Tensor t = Tensor::empty(Shape{1000}, DType::F32, Device::CUDA);
    small_block = t.raw();
    EXPECT_GE(cuda_bytes_in_use(), in_use_before + 4000);
    EXPECT_GE(cuda_bytes_reserved(), cuda_bytes_in_use());
  }
  EXPECT_EQ(cuda_bytes_in_use(), in_use_before);
  const size_t reserved = cuda_bytes_reserved();
  {
    Tensor t = Tensor::empty(Shape{1000}, DType::F32, Device::CUDA);
    EXPECT_EQ(t.raw(), small_block);  // the block just freed, not a new cudaMalloc
    EXPECT_EQ(cuda_bytes_reserved(), reserved);
  }
  // Large blocks come in 2 MiB steps: 5 000 000 and 6 000 000 bytes share one 6 MiB class.
  const void* big_block = nullptr;
  {
    Tensor t = Tensor::empty(Shape{1250000}, DType::F32, Device::CUDA);
    big_block = t.raw();
  }
  const size_t reserved_big = cuda_bytes_reserved();
  {
    Tensor t = Tensor::empty(Shape{1500000}, DType::F32, Device::CUDA);
    EXPECT_EQ(t.raw(), big_block);
    EXPECT_EQ(cuda_bytes_reserved(), reserved_big);
  }
  EXPECT_EQ(cuda_bytes_in_use(), in_use_before);
}

TEST(CudaAllocator, OutOfMemoryIsAClearErrorAndLeavesTheGpuUsable) {
  SKIP_WITHOUT_GPU();
  const size_t in_use_before = cuda_bytes_in_use();
  try {
    cuda_alloc(size_t(1) << 50);
    ADD_FAILURE() << "allocating 1 PiB did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA out of memory allocating"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cuda_bytes_in_use(), in_use_before);
  // The failed cudaMalloc must not surface later as a launch error.
  Rng rng(12);
  Tensor x = random_cpu(Shape{4099}, DType::F32, rng);
  expect_gpu_close(neg(on_gpu(x)), neg(x), kExact, "neg after out of memory");
  cuda_synchronize();
}
