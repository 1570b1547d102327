// The tensor library's parts for Llama- and Gemma-family models (tensor/half.h, tensor/ops.h) on the
// CPU: bf16 / f16 storage (conversions against a brute-force nearest-value search and exhaustive round
// trips; copy; embedding and matmul reading 16-bit tables and weights against float64 loops of the
// widened values, across tile boundaries and in every transpose case); rms_norm, glu (SwiGLU and
// GeGLU) and its backward, soft_cap against float64 loops written here from their definitions; the
// errors their front-ends throw. (Gradients: tests/autograd/test_gradcheck_transformer.cpp; CUDA:
// test_cuda_parity_llm_ops.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/compare.h"

using namespace sae;
using sae::testing::expect_close;
using sae::testing::random_cpu;
using sae::testing::Tolerance;

namespace {

const DType kDTypes[] = {DType::F32, DType::F64};
Tolerance tol_for(DType d) { return d == DType::F32 ? Tolerance{2e-6, 2e-6} : Tolerance{1e-13, 1e-12}; }

float float_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Every finite value of a 16-bit format, from its bits through the conversion under test's twin
// written here: bf16 is the top half of a float32; f16 by its definition (-1)^s 2^(e-15) (1 + m/1024)
// or, subnormal, 2^-14 (m / 1024).
double f16_value(uint16_t bits) {
  const int sign = bits >> 15, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
  const double magnitude = exponent == 0 ? std::ldexp(mantissa / 1024.0, -14) : std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
  return sign ? -magnitude : magnitude;
}
double bf16_value(uint16_t bits) { return float_from_bits(uint32_t(bits) << 16); }

// The nearest finite 16-bit value to v by search over all of them (ties: the even mantissa), or the
// bits of infinity when v is beyond the largest value by at least half an ulp.
uint16_t nearest_by_search(double v, double (*value_of)(uint16_t), uint16_t exponent_mask, double overflow) {
  if (std::abs(v) >= overflow) return static_cast<uint16_t>((v < 0 ? 0x8000 : 0) | exponent_mask);
  uint16_t best = 0;
  double best_distance = INFINITY;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    if ((b & exponent_mask) == exponent_mask) continue;  // infinity or NaN
    const double d = std::abs(value_of(static_cast<uint16_t>(b)) - v);
    const bool even = (b & 1) == 0;
    if (d < best_distance || (d == best_distance && even && (best & 1))) best = static_cast<uint16_t>(b), best_distance = d;
  }
  // A value that rounds to zero keeps its sign: +0 or -0 (both have even mantissas, so the search
  // above cannot tell them apart).
  if (value_of(best) == 0.0) return std::signbit(v) ? 0x8000 : 0;
  return best;
}

std::vector<float> conversion_probes(Rng& rng) {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.0f, 65519.99f, 6.1035156e-05f, 5.9604645e-08f,
                          2.9802322e-08f, 2.98023259e-08f, 8.9406967e-08f, 1.0009765625f, 1.00048828125f,
                          1.00146484375f, 3.0e38f, 1e-40f, 0.1f, 1.0f / 3.0f, 1.00390625f, 1.001953125f, 1.005859375f};
  for (int i = 0; i < 600; ++i) {
    const double mag = std::ldexp(rng.uniform(1.0, 2.0), static_cast<int>(rng.below(60)) - 30);
    v.push_back(static_cast<float>(rng.below(2) ? mag : -mag));
  }
  return v;
}

}  // namespace

TEST(HalfTypes, ConversionsRoundToTheNearestValueTiesToEven) {
  Rng rng(101);
  for (float f : conversion_probes(rng)) {
    const uint16_t want_f16 = nearest_by_search(f, f16_value, 0x7c00, 65520.0);
    EXPECT_EQ(to_float16(f).bits, want_f16) << "f16 of " << f;
    const double bf16_max = bf16_value(0x7f7f), bf16_overflow = bf16_max + std::ldexp(1.0, 127 - 8);  // + half an ulp
    const uint16_t want_bf16 = nearest_by_search(f, bf16_value, 0x7f80, bf16_overflow);
    EXPECT_EQ(to_bfloat16(f).bits, want_bf16) << "bf16 of " << f;
  }
  // Special values.
  EXPECT_EQ(to_float16(INFINITY).bits, 0x7c00);
  EXPECT_EQ(to_float16(-INFINITY).bits, 0xfc00);
  EXPECT_EQ(to_float16(1e6f).bits, 0x7c00);
  EXPECT_TRUE(std::isnan(widen(to_float16(NAN))));
  EXPECT_TRUE(std::isnan(widen(to_bfloat16(NAN))));
  EXPECT_EQ(to_bfloat16(INFINITY).bits, 0x7f80);
  EXPECT_TRUE(std::isinf(widen(Float16{0x7c00})));
  EXPECT_TRUE(std::isnan(widen(Float16{0x7e01})));
}

TEST(HalfTypes, EveryValueWidensExactlyAndRoundTrips) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const uint16_t bits = static_cast<uint16_t>(b);
    if ((bits & 0x7c00) != 0x7c00) {
      const float wide = widen(Float16{bits});
      ASSERT_EQ(static_cast<double>(wide), f16_value(bits)) << std::hex << b;
      ASSERT_EQ(to_float16(wide).bits, bits) << std::hex << b;
    }
    if ((bits & 0x7f80) != 0x7f80) {
      const float wide = widen(BFloat16{bits});
      ASSERT_EQ(static_cast<double>(wide), bf16_value(bits)) << std::hex << b;
      ASSERT_EQ(to_bfloat16(wide).bits, bits) << std::hex << b;
    }
  }
}

TEST(HalfTypes, TensorsConvertCopyAndReadBack) {
  Rng rng(102);
  const Tensor x = random_cpu(Shape{7, 5}, DType::F32, rng);
  for (DType h : {DType::BF16, DType::F16}) {
    const Tensor half = x.to(h);
    EXPECT_EQ(half.dtype(), h);
    EXPECT_EQ(half.nbytes(), size_t(70));
    const std::vector<double> in = x.to_vector(), back = half.to_vector();
    for (size_t i = 0; i < in.size(); ++i) {
      const float f = static_cast<float>(in[i]);
      const double want = h == DType::BF16 ? widen(to_bfloat16(f)) : widen(to_float16(f));
      ASSERT_EQ(back[i], want) << i;
    }
    expect_close(half.to(DType::F32), Tensor::from_vector(back, x.shape()), sae::testing::kExact, "widened");
    expect_close(x.to(DType::F64).to(h).to(DType::F64), half.to(DType::F64), sae::testing::kExact, "from f64");
    EXPECT_EQ(Tensor::from_vector(in, x.shape(), h).to_vector(), back);
    const Tensor copy = half.clone();
    EXPECT_EQ(copy.to_vector(), back);
    EXPECT_NE(std::string(half.describe()).find(h == DType::BF16 ? "bf16" : "f16"), std::string::npos);
    // Arithmetic refuses them.
    EXPECT_THROW(add(half, half), Error);
    EXPECT_THROW(relu(half), Error);
    EXPECT_THROW(softmax(half), Error);
    EXPECT_THROW(matmul(half, x.to(h), false, true), Error);  // only b may be 16-bit
    EXPECT_THROW(copy_(const_cast<Tensor&>(copy), Tensor::zeros(Shape{7, 5}, DType::I32)), Error);
  }
}

TEST(HalfTypes, BorrowedTensorsReadForeignBytesAndKeepTheirOwnerAlive) {
  auto owner = std::make_shared<std::vector<uint16_t>>(std::vector<uint16_t>{0x3f80, 0x4000, 0xc040, 0x0000});
  const Tensor t = Tensor::borrowed(owner->data(), Shape{2, 2}, DType::BF16, owner);
  std::weak_ptr<std::vector<uint16_t>> watch = owner;
  owner.reset();
  EXPECT_FALSE(watch.expired());
  EXPECT_EQ(t.to_vector(), (std::vector<double>{1.0, 2.0, -3.0, 0.0}));
  const Tensor row = t.slice_rows(1, 2);
  EXPECT_EQ(row.to_vector(), (std::vector<double>{-3.0, 0.0}));
  {
    Tensor gone = t;
    (void)gone;
  }
  EXPECT_THROW(Tensor::borrowed(reinterpret_cast<const char*>(watch.lock()->data()) + 1, Shape{1}, DType::BF16,
                                watch.lock()),
               Error);
}

TEST(HalfTypes, EmbeddingWidensRowsOfA16BitTable) {
  Rng rng(103);
  const Tensor table32 = random_cpu(Shape{11, 6}, DType::F32, rng);
  const Tensor ids = Tensor::from_vector({3, 0, 10, 3, 7}, Shape{5}, DType::I32);
  for (DType h : {DType::BF16, DType::F16}) {
    const Tensor table = table32.to(h);
    const Tensor rows = embedding(table, ids);
    EXPECT_EQ(rows.dtype(), DType::F32);
    expect_close(rows, embedding(table.to(DType::F32), ids), sae::testing::kExact, "16-bit embedding");
    Tensor wrong = Tensor::empty(Shape{5, 6}, DType::F64);
    EXPECT_THROW(embedding_(wrong, table, ids), Error);
  }
}

// out = alpha op(a) op(b) + beta out with b 16-bit, against float64 loops of the widened values: small
// shapes, one row (the GEMV path), and k large enough that n spans several widening tiles.
TEST(HalfTypes, MatmulWidensA16BitWeightInEveryTransposeCase) {
  Rng rng(104);
  struct Case {
    int64_t m, k, n;
  };
  for (const Case& c : {Case{5, 7, 3}, Case{1, 33, 20}, Case{9, 8192, 100}, Case{2, 3, 1}}) {
    for (DType h : {DType::BF16, DType::F16}) {
      for (int flags = 0; flags < 4; ++flags) {
        const bool ta = flags & 1, tb = flags & 2;
        if (c.k > 1000 && ta) continue;  // the big case once per trans_b is enough
        const Tensor a = random_cpu(ta ? Shape{c.k, c.m} : Shape{c.m, c.k}, DType::F32, rng);
        const Tensor b = random_cpu(tb ? Shape{c.n, c.k} : Shape{c.k, c.n}, DType::F32, rng).to(h);
        const Tensor start = random_cpu(Shape{c.m, c.n}, DType::F32, rng);
        const std::vector<double> av = a.to_vector(), bv = b.to_vector(), sv = start.to_vector();
        const double alpha = 0.75, beta = flags == 3 ? 0.0 : -0.5;
        std::vector<double> want(c.m * c.n);
        for (int64_t i = 0; i < c.m; ++i)
          for (int64_t j = 0; j < c.n; ++j) {
            double acc = 0;
            for (int64_t p = 0; p < c.k; ++p)
              acc += av[ta ? p * c.m + i : i * c.k + p] * bv[tb ? j * c.k + p : p * c.n + j];
            want[i * c.n + j] = alpha * acc + beta * sv[i * c.n + j];
          }
        Tensor out = start.clone();
        matmul_(out, a, ta, b, tb, alpha, beta);
        sae::testing::expect_close_to_scale(out, Tensor::from_vector(want, out.shape()), 2e-6,
                                            cat(dtype_name(h), " m ", c.m, " k ", c.k, " n ", c.n, " flags ", flags));
      }
    }
  }
}

TEST(LlmOps, RmsNormAgainstFloat64Loops) {
  Rng rng(105);
  for (DType d : kDTypes) {
    for (auto [rows, width] : {std::tuple<int64_t, int64_t>{4, 7}, {1, 1}, {37, 256}, {3, 2304}}) {
      const Tensor x = random_cpu(Shape{rows, width}, d, rng), w = random_cpu(Shape{width}, d, rng);
      const double eps = 1e-6;
      const std::vector<double> xv = x.to_vector(), wv = w.to_vector();
      std::vector<double> want(xv.size()), want_rstd(rows);
      for (int64_t r = 0; r < rows; ++r) {
        double squares = 0;
        for (int64_t j = 0; j < width; ++j) squares += xv[r * width + j] * xv[r * width + j];
        want_rstd[r] = 1.0 / std::sqrt(squares / width + eps);
        for (int64_t j = 0; j < width; ++j) want[r * width + j] = xv[r * width + j] * want_rstd[r] * wv[j];
      }
      Tensor out = Tensor::empty(x.shape(), d), rstd = Tensor::empty(Shape{rows}, d);
      rms_norm_(out, rstd, x, w, eps);
      expect_close(out, Tensor::from_vector(want, x.shape(), d), tol_for(d), cat("rms_norm ", x.shape().str()));
      expect_close(rstd, Tensor::from_vector(want_rstd, Shape{rows}, d), tol_for(d), "rstd");
      Tensor in_place = x.clone();
      rms_norm_(in_place, rstd, in_place, w, eps);
      expect_close(in_place, out, sae::testing::kExact, "in place");
      // A row of zeros: eps keeps it finite (0 out).
      expect_close(rms_norm(Tensor::zeros(Shape{1, width}, d), w, eps), Tensor::zeros(Shape{1, width}, d),
                   sae::testing::kExact, "zeros");
    }
  }
  const Tensor x = Tensor::zeros(Shape{2, 4});
  EXPECT_THROW(rms_norm(x, Tensor::zeros(Shape{3}), 1e-6), Error);
  EXPECT_THROW(rms_norm(x, Tensor::zeros(Shape{4}), -1.0), Error);
  EXPECT_THROW(rms_norm(x, Tensor::zeros(Shape{4}, DType::F64), 1e-6), Error);
}

TEST(LlmOps, GatedActivationsAgainstFloat64Loops) {
  Rng rng(106);
  const auto silu = [](double z) { return z / (1.0 + std::exp(-z)); };
  const auto silu_grad = [&](double z) {
    const double s = 1.0 / (1.0 + std::exp(-z));
    return s + z * s * (1.0 - s);
  };
  const auto gelu_tanh = [](double z) { return 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z))); };
  const auto gelu_tanh_grad = [&](double z) {  // central difference of the closed form, in double
    const double h = 1e-6;
    return (gelu_tanh(z + h) - gelu_tanh(z - h)) / (2 * h);
  };
  for (DType d : kDTypes) {
    for (GluActivation act : {GluActivation::silu, GluActivation::gelu_tanh}) {
      for (auto [rows, f] : {std::tuple<int64_t, int64_t>{3, 5}, {1, 1}, {17, 96}}) {
        const Tensor x = random_cpu(Shape{rows, 2 * f}, d, rng, -4.0, 4.0);
        const Tensor g = random_cpu(Shape{rows, f}, d, rng);
        const std::vector<double> xv = x.to_vector(), gv = g.to_vector();
        std::vector<double> want(rows * f), want_grad(rows * 2 * f);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < f; ++j) {
            const double gate = xv[r * 2 * f + j], up = xv[r * 2 * f + f + j];
            const double a = act == GluActivation::silu ? silu(gate) : gelu_tanh(gate);
            const double da = act == GluActivation::silu ? silu_grad(gate) : gelu_tanh_grad(gate);
            want[r * f + j] = a * up;
            want_grad[r * 2 * f + j] = gv[r * f + j] * up * da;
            want_grad[r * 2 * f + f + j] = gv[r * f + j] * a;
          }
        const std::string what = cat(glu_activation_name(act), " ", dtype_name(d), " ", x.shape().str());
        expect_close(glu(x, act), Tensor::from_vector(want, Shape{rows, f}, d), tol_for(d), what);
        Tensor gx = Tensor::empty(x.shape(), d);
        glu_backward_(gx, x, g, act);
        // The tanh GELU's derivative is checked against a central difference (1e-6 step): 1e-8 of slack.
        const Tolerance grad_tol = act == GluActivation::silu ? tol_for(d) : Tolerance{1e-6, 1e-6};
        expect_close(gx, Tensor::from_vector(want_grad, x.shape(), d), grad_tol, what + " backward");
      }
    }
  }
  EXPECT_THROW(glu(Tensor::zeros(Shape{2, 3}), GluActivation::silu), Error);  // odd width
  EXPECT_THROW(glu(Tensor::zeros(Shape{6}), GluActivation::silu), Error);
  Tensor out = Tensor::zeros(Shape{2, 2});
  EXPECT_THROW(glu_(out, Tensor::zeros(Shape{2, 6}), GluActivation::silu), Error);
}

TEST(LlmOps, SoftCapAgainstFloat64Loops) {
  Rng rng(107);
  for (DType d : kDTypes) {
    for (double cap : {50.0, 5.0, 0.5}) {
      const Tensor x = random_cpu(Shape{6, 9}, d, rng, -200.0, 200.0);
      const std::vector<double> xv = x.to_vector();
      std::vector<double> want(xv.size());
      for (size_t i = 0; i < xv.size(); ++i) want[i] = cap * std::tanh(xv[i] / cap);
      expect_close(soft_cap(x, cap), Tensor::from_vector(want, x.shape(), d), tol_for(d), cat("soft_cap ", cap));
      Tensor in_place = x.clone();
      soft_cap_(in_place, in_place, cap);
      expect_close(in_place, soft_cap(x, cap), sae::testing::kExact, "in place");
    }
    // Huge values and -inf go to -+cap; 0 stays 0.
    const Tensor edge = Tensor::from_vector({-INFINITY, 1e30, -1e30, 0.0}, Shape{4}, d);
    const std::vector<double> got = soft_cap(edge, 30.0).to_vector();
    EXPECT_EQ(got[0], -30.0);
    EXPECT_EQ(got[1], 30.0);
    EXPECT_EQ(got[3], 0.0);
  }
  EXPECT_THROW(soft_cap(Tensor::zeros(Shape{2}), 0.0), Error);
  EXPECT_THROW(soft_cap(Tensor::zeros(Shape{2}), INFINITY), Error);
}
