// --precision (tensor/precision.h): the roundings against independent formulas (io/float_convert's
// bfloat16 conversion, frexp arithmetic for TF32), the CPU GEMMs at tf32 and bf16 against float64
// products of the rounded inputs written here, and the CUDA GEMMs at every precision against the CPU
// ones (skipped without a GPU). Tolerances are stated where they are used.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "io/float_convert.h"
#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tensor/rng.h"
#include "tests/util/compare.h"
#include "tests/util/gpu.h"

using namespace sae;
using sae::testing::worst_error;
using sae::testing::expect_close;
using sae::testing::expect_close_to_scale;
using sae::testing::kExact;
using sae::testing::random_cpu;

namespace {

// The nearest float with `bits` significant bits (ties to even), for normal floats: frexp and an
// exact scaled rounding in double (the default rounding mode is to nearest even).
double nearest_with_bits(double x, int bits) {
  if (x == 0.0 || !std::isfinite(x)) return x;
  int exponent = 0;
  const double mantissa = std::frexp(x, &exponent);  // x = mantissa * 2^exponent, |mantissa| in [0.5, 1)
  return std::ldexp(std::nearbyint(std::ldexp(mantissa, bits)), exponent - bits);
}

// A float64 product of two row-major matrices whose entries are first rounded by `round`.
std::vector<double> rounded_product(const Tensor& a, const Tensor& b, float (*round)(float)) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const std::vector<double> av = a.to_vector(), bv = b.to_vector();
  std::vector<double> out(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t t = 0; t < k; ++t)
        s += double(round(static_cast<float>(av[i * k + t]))) * double(round(static_cast<float>(bv[t * n + j])));
      out[i * n + j] = s;
    }
  return out;
}

float keep(float x) { return x; }

// max |got - want| / max |want|.
double relative_distance(const std::vector<double>& got, const std::vector<double>& want) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = worst_error(worst, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return worst / scale;
}

}  // namespace

TEST(Precision, NamesParseAndUnknownOnesAreRefused) {
  for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16})
    EXPECT_EQ(parse_precision(precision_name(p)), p);
  EXPECT_STREQ(precision_name(Precision::BF16), "bf16");
  try {
    parse_precision("fp16");
    FAIL() << "fp16 accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--precision: expected fp32, tf32 or bf16, got 'fp16'"), std::string::npos)
        << e.what();
  }
}

TEST(Precision, ScopedPrecisionIsPutBack) {
  EXPECT_EQ(matmul_precision(), Precision::FP32);  // the default every other test relies on
  {
    const ScopedMatmulPrecision outer(Precision::BF16);
    EXPECT_EQ(matmul_precision(), Precision::BF16);
    {
      const ScopedMatmulPrecision inner(Precision::TF32);
      EXPECT_EQ(matmul_precision(), Precision::TF32);
    }
    EXPECT_EQ(matmul_precision(), Precision::BF16);
  }
  EXPECT_EQ(matmul_precision(), Precision::FP32);
}

TEST(Precision, Bf16RoundingIsTheFileFormatsConversion) {
  // io/float_convert.h's f32_to_bf16 (written for .safetensors files) is an independent rounding
  // to nearest even; widening it back must give round_to_bf16 bit for bit, here over random floats of
  // every exponent, ties, values that round up to the next binade or to infinity, and specials.
  Rng rng(1);
  std::vector<float> values = {0.0f, -0.0f, 1.0f, -1.0f, std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::max(),
                               std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min(),
                               1.0f + std::ldexp(1.0f, -8),                       // a tie: to even (1)
                               1.0f + 3 * std::ldexp(1.0f, -8),                   // a tie: to even (up)
                               1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20),  // above the tie: up
                               2.0f - std::ldexp(1.0f, -10)};                     // up to the next binade
  for (int i = 0; i < 100000; ++i) values.push_back(f32_from_bits(static_cast<uint32_t>(rng.next_u64())));
  int64_t checked = 0;
  for (float x : values) {
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(round_to_bf16(x)));
      continue;
    }
    const float want = bf16_to_f32(f32_to_bf16(x));
    ASSERT_EQ(f32_bits(round_to_bf16(x)), f32_bits(want)) << "x = " << x << " (bits " << f32_bits(x) << ")";
    ++checked;
  }
  EXPECT_GT(checked, 99000);
  EXPECT_EQ(round_to_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);
  EXPECT_EQ(round_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(round_to_bf16(std::numeric_limits<float>::max()), std::numeric_limits<float>::infinity());
}

TEST(Precision, Tf32AndBf16RoundingAreNearestWithTheirMantissaBits) {
  // Normal floats: the nearest value with 11 (TF32) or 8 (bfloat16) significant bits, from frexp.
  Rng rng(2);
  for (int i = 0; i < 100000; ++i) {
    const double x = std::ldexp(rng.uniform(-1.0, 1.0), static_cast<int>(rng.below(200)) - 100);
    const float xf = static_cast<float>(x);
    ASSERT_EQ(double(round_to_tf32(xf)), nearest_with_bits(xf, 11)) << "x = " << xf;
    ASSERT_EQ(double(round_to_bf16(xf)), nearest_with_bits(xf, 8)) << "x = " << xf;
    EXPECT_EQ(f32_bits(round_to_tf32(xf)) & 0x1FFFu, 0u);
    EXPECT_EQ(round_to_precision(xf, Precision::FP32), xf);
  }
  EXPECT_EQ(round_to_tf32(1.0f + std::ldexp(1.0f, -11)), 1.0f);  // a tie: to even
  EXPECT_EQ(round_to_tf32(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 1.0f + std::ldexp(1.0f, -10));
}

TEST(Precision, CpuMatmulRoundsItsFloat32InputsAndSumsInFloat32) {
  Rng rng(3);
  const Tensor a = random_cpu(Shape{37, 300}, DType::F32, rng), b = random_cpu(Shape{300, 29}, DType::F32, rng);
  const std::vector<double> exact = rounded_product(a, b, keep);
  for (Precision p : {Precision::TF32, Precision::BF16}) {
    const ScopedMatmulPrecision scope(p);
    float (*round)(float) = p == Precision::BF16 ? round_to_bf16 : round_to_tf32;
    const std::vector<double> want = rounded_product(a, b, round);
    const std::vector<double> got = matmul(a, b).to_vector();
    // Float32 sums of 300 terms of size <= 4 (|a|, |b| < 2): far inside 1e-5 of the largest value.
    EXPECT_LT(relative_distance(got, want), 1e-5) << precision_name(p);
    // And the rounding did happen: the result is as far from the float32 product as the rounded
    // inputs make it (bf16: ~2^-9 relative per input, tf32: ~2^-12), measurably more than float32's sums.
    const double moved = relative_distance(got, exact);
    EXPECT_GT(moved, p == Precision::BF16 ? 3e-4 : 3e-5) << precision_name(p);
    EXPECT_LT(moved, p == Precision::BF16 ? 3e-2 : 3e-3) << precision_name(p);
    // Transposed operands and accumulation (alpha, beta) go through the same rounding.
    Tensor acc = Tensor::full(Shape{37, 29}, 1.0);
    matmul_(acc, transpose(a), true, transpose(b), true, 2.0, -1.0);
    std::vector<double> want_acc = want;
    for (double& v : want_acc) v = 2.0 * v - 1.0;
    EXPECT_LT(relative_distance(acc.to_vector(), want_acc), 1e-5) << precision_name(p) << " transposed";
  }
  // Back at fp32: the plain float32 product.
  EXPECT_LT(relative_distance(matmul(a, b).to_vector(), exact), 1e-6);
}

TEST(Precision, KnownProductsShowWhichInputsWereRounded) {
  // Every a = 1 + 2^-9: a float32 and a TF32 value, but below half of bfloat16's last bit at 1, so
  // bf16 reads it as 1. With b = 1 and k = 512 each output is 512 (1 + 2^-9) = 513 exactly in
  // float32 (every partial sum is exact) and 512 in bf16.
  const Tensor a = Tensor::full(Shape{3, 512}, 1.0 + std::ldexp(1.0, -9)), b = Tensor::full(Shape{512, 2}, 1.0);
  expect_close(matmul(a, b), Tensor::full(Shape{3, 2}, 513.0), kExact, "fp32");
  {
    const ScopedMatmulPrecision scope(Precision::TF32);
    expect_close(matmul(a, b), Tensor::full(Shape{3, 2}, 513.0), kExact, "tf32 keeps 1 + 2^-9");
    const Tensor a12 = Tensor::full(Shape{3, 512}, 1.0 + std::ldexp(1.0, -12));
    expect_close(matmul(a12, b), Tensor::full(Shape{3, 2}, 512.0), kExact, "tf32 drops 2^-12");
  }
  {
    const ScopedMatmulPrecision scope(Precision::BF16);
    expect_close(matmul(a, b), Tensor::full(Shape{3, 2}, 512.0), kExact, "bf16 drops 2^-9");
    // float64 GEMMs are never rounded.
    expect_close(matmul(a.to(DType::F64), b.to(DType::F64)), Tensor::full(Shape{3, 2}, 513.0, DType::F64), kExact,
                 "f64 at bf16");
    // batched_matmul rounds alike.
    expect_close(batched_matmul(a.reshape(Shape{1, 3, 512}), b.reshape(Shape{1, 512, 2})),
                 Tensor::full(Shape{1, 3, 2}, 512.0), kExact, "batched bf16");
  }
}

TEST(Precision, CpuBatchedMatmulAtBf16IsTheRoundedProduct) {
  Rng rng(4);
  const Tensor a = random_cpu(Shape{4, 9, 70}, DType::F32, rng), b = random_cpu(Shape{4, 70, 5}, DType::F32, rng);
  const ScopedMatmulPrecision scope(Precision::BF16);
  const Tensor got = batched_matmul(a, b);
  for (int64_t i = 0; i < 4; ++i) {
    const Tensor ai = a.slice_rows(i, i + 1).reshape(Shape{9, 70}), bi = b.slice_rows(i, i + 1).reshape(Shape{70, 5});
    const std::vector<double> want = rounded_product(ai, bi, round_to_bf16);
    EXPECT_LT(relative_distance(got.slice_rows(i, i + 1).to_vector(), want), 1e-5) << "batch " << i;
  }
}

TEST(Precision, Bf16OutputIsTheFloat32ProductRoundedOnce) {
  Rng rng(7);
  const Tensor a = random_cpu(Shape{37, 300}, DType::F32, rng), b = random_cpu(Shape{300, 29}, DType::F32, rng);
  for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
    const ScopedMatmulPrecision scope(p);
    Tensor got = Tensor::empty(Shape{37, 29}, DType::BF16);
    matmul_(got, a, false, b, false);
    ASSERT_EQ(got.dtype(), DType::BF16);
    // The same float32 product the float32 output gets (one GEMM path), rounded to nearest even.
    const std::vector<double> product = matmul(a, b).to_vector(), stored = got.to(DType::F32).to_vector();
    for (size_t i = 0; i < product.size(); ++i)
      ASSERT_EQ(stored[i], double(round_to_bf16(static_cast<float>(product[i])))) << precision_name(p) << " " << i;
    // Independently: within half a bf16 step (2^-8 relative) of the float64 product of the inputs
    // rounded as the precision rounds them, plus the float32 sums' 1e-5 of the largest value.
    float (*round)(float) = p == Precision::BF16 ? round_to_bf16 : (p == Precision::TF32 ? round_to_tf32 : keep);
    const std::vector<double> want = rounded_product(a, b, round);
    double scale = 0;
    for (double w : want) scale = std::max(scale, std::abs(w));
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_LE(std::abs(stored[i] - want[i]), std::ldexp(std::abs(want[i]), -8) + 1e-5 * scale) << i;
  }
  // Transposed operands and alpha.
  Tensor t = Tensor::empty(Shape{37, 29}, DType::BF16);
  matmul_(t, transpose(a), true, transpose(b), true, 2.0);
  const std::vector<double> twice = matmul(a, b).to_vector(), stored = t.to(DType::F32).to_vector();
  for (size_t i = 0; i < twice.size(); ++i)
    ASSERT_EQ(stored[i], double(round_to_bf16(static_cast<float>(2.0 * twice[i])))) << i;
  // 512 (1 + 2^-9) = 513 in float32 sums, stored as bf16's 512 (its step at 512 is 4).
  Tensor known = Tensor::empty(Shape{3, 2}, DType::BF16);
  matmul_(known, Tensor::full(Shape{3, 512}, 1.0 + std::ldexp(1.0, -9)), false, Tensor::full(Shape{512, 2}, 1.0),
          false);
  expect_close(known.to(DType::F32), Tensor::full(Shape{3, 2}, 512.0), kExact, "513 stored as bf16");
}

TEST(Precision, SixteenBitWeightsAreReadAtTheRunsPrecision) {
  // A model's bf16 / f16 weight matrices (widened per tile) and the float32 activations they multiply
  // are GEMM inputs like any others: rounded at tf32 / bf16 (bf16 values are exact in both, f16 ones
  // in tf32; f16 at bf16 rounds). Against float64 products of the inputs rounded here.
  Rng rng(9);
  const Tensor a = random_cpu(Shape{37, 300}, DType::F32, rng), b32 = random_cpu(Shape{300, 29}, DType::F32, rng);
  for (DType h : {DType::BF16, DType::F16}) {
    const Tensor b = b32.to(h), widened = b.to(DType::F32);
    const std::vector<double> exact = rounded_product(a, widened, keep);
    for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
      SCOPED_TRACE(cat(dtype_name(h), " at ", precision_name(p)));
      const ScopedMatmulPrecision scope(p);
      float (*round)(float) = p == Precision::BF16 ? round_to_bf16 : (p == Precision::TF32 ? round_to_tf32 : keep);
      const std::vector<double> want = rounded_product(a, widened, round);
      EXPECT_LT(relative_distance(matmul(a, b).to_vector(), want), 1e-5);
      Tensor t = Tensor::full(Shape{37, 29}, 1.0);  // a weight stored [n, k] (trans_b), alpha and beta
      matmul_(t, a, false, transpose(b32).to(h), true, 2.0, -1.0);
      std::vector<double> want_t = want;
      for (double& v : want_t) v = 2.0 * v - 1.0;
      EXPECT_LT(relative_distance(t.to_vector(), want_t), 1e-5) << "trans_b";
      if (p != Precision::FP32) {
        EXPECT_GT(relative_distance(matmul(a, b).to_vector(), exact), 3e-5) << "a was rounded";
      }
    }
  }
  // 1 + 2^-9 in the activations: kept at fp32 and tf32, dropped at bf16 (weights bf16 ones).
  const Tensor a9 = Tensor::full(Shape{3, 512}, 1.0 + std::ldexp(1.0, -9));
  const Tensor ones = Tensor::full(Shape{512, 2}, 1.0).to(DType::BF16);
  expect_close(matmul(a9, ones), Tensor::full(Shape{3, 2}, 513.0), kExact, "fp32, bf16 weights");
  const ScopedMatmulPrecision scope(Precision::BF16);
  expect_close(matmul(a9, ones), Tensor::full(Shape{3, 2}, 512.0), kExact, "bf16, bf16 weights");
  // f16 weights of 1 + 2^-9 (exact in f16) are rounded to 1 at bf16.
  expect_close(matmul(Tensor::full(Shape{3, 512}, 1.0), Tensor::full(Shape{512, 2}, 1.0 + std::ldexp(1.0, -9)).to(DType::F16)),
               Tensor::full(Shape{3, 2}, 512.0), kExact, "bf16, f16 weights");
}

TEST(Precision, WideSixteenBitProductsAreMadeInBlocksOfRowsWithTheSameBits) {
  // At 2^20 latents the CPU's 16-bit GEMMs work a block of output rows at a time (256 MB of float32
  // scratch, at least 64 rows) instead of a float32 copy of a whole [N, F] operand or product. Each
  // output row is one GEMM's row either way, so the bits equal the product of the operand widened
  // whole. Blocks of 64 and 6 rows: a bf16 output [70, 2^20], a bf16 first operand [70, 2^20] x
  // [2^20, 2], and its transpose [2^20, 70]^T x [2^20, 2] (blocks of its columns).
  const int64_t wide = int64_t(1) << 20, rows = 70, k = 8;
  Rng rng(21);
  const Tensor x = random_cpu(Shape{rows, k}, DType::F32, rng), w = random_cpu(Shape{k, wide}, DType::F32, rng);
  Tensor o16 = Tensor::empty(Shape{rows, wide}, DType::BF16), o32 = Tensor::empty(Shape{rows, wide});
  matmul_(o16, x, false, w, false);
  matmul_(o32, x, false, w, false);
  // The float32 product of the same blocks of rows, rounded: an output row is one GEMM row either way,
  // but OpenBLAS may sum a row in another order in a GEMM of other rows (its Haswell kernels do for the
  // last rows of 70, by an ulp that rounding to bf16 shows now and then), so the blocks are made here too.
  Tensor blocks = Tensor::empty(Shape{rows, wide});
  for (const auto& [from, to] : {std::pair<int64_t, int64_t>{0, 64}, {64, rows}}) {
    Tensor part = Tensor::empty(Shape{to - from, wide});
    matmul_(part, x.slice_rows(from, to), false, w, false);
    Tensor rows_of_blocks = blocks.slice_rows(from, to);
    copy_(rows_of_blocks, part);
  }
  expect_close(o16.to(DType::F32), blocks.to(DType::BF16).to(DType::F32), kExact, "bf16 output in blocks");
  expect_close(o16.to(DType::F32), o32.to(DType::BF16).to(DType::F32), sae::testing::Tolerance{1e-5, 1.0 / 128},
               "bf16 output in blocks against the whole product (an ulp of bf16; sums that cancel to 1e-5)");

  const Tensor f = o16, v = random_cpu(Shape{wide, 2}, DType::F32, rng, -0.01, 0.01);
  Tensor got = Tensor::empty(Shape{rows, 2}), want = Tensor::empty(Shape{rows, 2});
  matmul_(got, f, false, v, false);
  matmul_(want, f.to(DType::F32), false, v, false);
  expect_close(got, want, kExact, "bf16 first operand in blocks of rows");

  const Tensor ft = transpose(o32).to(DType::BF16), u = random_cpu(Shape{wide, 2}, DType::F32, rng);
  Tensor got_t = Tensor::empty(Shape{rows, 2}), want_t = Tensor::empty(Shape{rows, 2});
  matmul_(got_t, ft, true, u, false);
  matmul_(want_t, ft.to(DType::F32), true, u, false);
  expect_close(got_t, want_t, kExact, "transposed bf16 first operand in blocks of its columns");
}

TEST(Precision, SixteenBitActivationsAreWidenedAndReadAtTheRunsPrecision) {
  // bf16 / f16 activations as the first operand (plain and transposed), with a float32 or 16-bit second
  // operand and a float32 or bf16 output: the float32 product of the widened values, their inputs
  // rounded as the precision rounds them. Against float64 products of those rounded values.
  Rng rng(11);
  const Tensor a32 = random_cpu(Shape{37, 300}, DType::F32, rng), b32 = random_cpu(Shape{300, 29}, DType::F32, rng);
  for (DType h : {DType::BF16, DType::F16})
    for (DType bt : {DType::F32, DType::BF16}) {
      const Tensor a = a32.to(h), wide_a = a.to(DType::F32), b = b32.to(bt), wide_b = b.to(DType::F32);
      for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
        SCOPED_TRACE(cat(dtype_name(h), " @ ", dtype_name(bt), " at ", precision_name(p)));
        const ScopedMatmulPrecision scope(p);
        float (*round)(float) = p == Precision::BF16 ? round_to_bf16 : (p == Precision::TF32 ? round_to_tf32 : keep);
        const std::vector<double> want = rounded_product(wide_a, wide_b, round);
        Tensor out = Tensor::full(Shape{37, 29}, 1.0);
        matmul_(out, a, false, b, false, 2.0, -1.0);  // alpha and beta
        std::vector<double> want_ab = want;
        for (double& v : want_ab) v = 2.0 * v - 1.0;
        EXPECT_LT(relative_distance(out.to_vector(), want_ab), 1e-5) << "a";
        Tensor t = Tensor::empty(Shape{37, 29});
        matmul_(t, transpose(a32).to(h), true, b, false);  // a stored [k, m]: f^T dx_hat
        EXPECT_LT(relative_distance(t.to_vector(), want), 1e-5) << "trans_a";
        // A bf16 output: the float32 product of the same path, rounded once.
        Tensor o16 = Tensor::empty(Shape{37, 29}, DType::BF16), o32 = Tensor::empty(Shape{37, 29});
        matmul_(o16, a, false, b, false);
        matmul_(o32, a, false, b, false);
        const std::vector<double> p32 = o32.to_vector(), p16 = o16.to(DType::F32).to_vector();
        for (size_t i = 0; i < p32.size(); ++i)
          ASSERT_EQ(p16[i], double(round_to_bf16(static_cast<float>(p32[i])))) << i;
      }
    }
  // f16 activations of 1 + 2^-9 (exact in f16 and tf32) are rounded to 1 at bf16 only.
  const Tensor a9 = Tensor::full(Shape{3, 512}, 1.0 + std::ldexp(1.0, -9)).to(DType::F16);
  const Tensor ones = Tensor::full(Shape{512, 2}, 1.0);
  for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
    const ScopedMatmulPrecision scope(p);
    Tensor out = Tensor::empty(Shape{3, 2});
    matmul_(out, a9, false, ones, false);
    expect_close(out, Tensor::full(Shape{3, 2}, p == Precision::BF16 ? 512.0 : 513.0), kExact, precision_name(p));
  }
}

TEST(Precision, MixedMatmulsRefuseAccumulationIntoBf16AndOtherDtypes) {
  const Tensor a = Tensor::full(Shape{2, 3}, 1.0), b = Tensor::full(Shape{3, 4}, 1.0);
  Tensor out = Tensor::empty(Shape{2, 4}, DType::BF16);
  EXPECT_THROW(matmul_(out, a, false, b, false, 1.0, 1.0), Error);
  EXPECT_THROW(matmul_(out, a.to(DType::F64), false, b.to(DType::F64), false), Error);
  Tensor out32 = Tensor::empty(Shape{2, 4}), out64 = Tensor::empty(Shape{2, 4}, DType::F64);
  EXPECT_THROW(matmul_(out32, a.to(DType::F64), false, b.to(DType::BF16), false), Error);
  EXPECT_THROW(matmul_(out64, a.to(DType::BF16), false, b, false), Error);
  EXPECT_THROW(matmul_(out32, a.to(DType::BF16), false, Tensor::zeros(Shape{3, 4}, DType::I32), false), Error);
  // Allowed: 16-bit operands on either side, into float32 or bf16.
  matmul_(out, a.to(DType::BF16), false, b.to(DType::F16), false);
  expect_close(out.to(DType::F32), Tensor::full(Shape{2, 4}, 3.0), kExact, "bf16 @ f16 into bf16");
}

// ---------------------------------------------------------------- CUDA against the CPU reference

TEST(CudaPrecision, MatmulAtEachPrecisionMatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  Rng rng(5);
  for (const auto& [m, k, n] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {37, 300, 29}, {218, 768, 1000},
                                                                   {513, 64, 2049}}) {
    const Tensor a = random_cpu(Shape{m, k}, DType::F32, rng), b = random_cpu(Shape{k, n}, DType::F32, rng);
    for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
      const ScopedMatmulPrecision scope(p);
      const Tensor ref = matmul(a, b);
      Tensor got = Tensor::full(Shape{m, n}, std::nan(""), DType::F32, Device::CUDA);
      matmul_(got, a.to(Device::CUDA), false, b.to(Device::CUDA), false);
      // bf16: the same rounded inputs (both round to nearest even), exact products, float32 sums in
      // another order: within 1e-4 of the largest value (float32 sums of <= 768 terms err below 1e-5;
      // the margin covers tensor cores' accumulation). tf32: cuBLAS may truncate the inputs where
      // the CPU reference rounds them, up to 2^-10 relative per input: 5e-3.
      const double rel = p == Precision::TF32 ? 5e-3 : 1e-4;
      expect_close_to_scale(got, ref, rel, cat("matmul ", precision_name(p), " ", m, "x", k, "x", n));
    }
  }
}

TEST(CudaPrecision, Bf16OutputMatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  Rng rng(8);
  const Tensor a = random_cpu(Shape{218, 768}, DType::F32, rng), b = random_cpu(Shape{768, 1000}, DType::F32, rng);
  for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
    const ScopedMatmulPrecision scope(p);
    Tensor ref = Tensor::empty(Shape{218, 1000}, DType::BF16), got = Tensor::empty(Shape{218, 1000}, DType::BF16, Device::CUDA);
    matmul_(ref, a, false, b, false);
    matmul_(got, a.to(Device::CUDA), false, b.to(Device::CUDA), false);
    // The float32 sums differ in order (and tf32 inputs may be truncated on the GPU, as above), so a
    // value may round to the neighbouring bf16: one bf16 step, 2^-7 of the value, on top of the
    // float32 tolerances of MatmulAtEachPrecisionMatchesTheCpuReference.
    expect_close_to_scale(got.to(DType::F32), ref.to(DType::F32), (p == Precision::TF32 ? 5e-3 : 1e-4) + 8e-3,
                          cat("bf16 output at ", precision_name(p)));
    // An empty product (k = 0) is zero, as on the CPU, over whatever the output held.
    Tensor empty_product = Tensor::full(Shape{3, 5}, NAN, DType::F32, Device::CUDA).to(DType::BF16);
    matmul_(empty_product, Tensor::zeros(Shape{3, 0}, DType::F32, Device::CUDA), false,
            Tensor::zeros(Shape{0, 5}, DType::F32, Device::CUDA), false);
    EXPECT_EQ(empty_product.to_vector(), std::vector<double>(15, 0.0)) << precision_name(p);
  }
}

TEST(CudaPrecision, SixteenBitWeightsAtEachPrecisionMatchTheCpuReference) {
  SKIP_WITHOUT_GPU();
  Rng rng(10);
  const Tensor a = random_cpu(Shape{218, 768}, DType::F32, rng), b32 = random_cpu(Shape{768, 1000}, DType::F32, rng);
  for (DType h : {DType::BF16, DType::F16})
    for (bool trans_b : {false, true})
      for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
        const ScopedMatmulPrecision scope(p);
        const Tensor b = (trans_b ? transpose(b32) : b32).to(h);
        Tensor ref = Tensor::empty(Shape{218, 1000}), got = Tensor::empty(Shape{218, 1000}, DType::F32, Device::CUDA);
        matmul_(ref, a, false, b, trans_b);
        matmul_(got, a.to(Device::CUDA), false, b.to(Device::CUDA), trans_b);
        // As MatmulAtEachPrecisionMatchesTheCpuReference: float32 sums in another order (bf16: the
        // weights read as stored by cublasGemmEx), tf32 inputs possibly truncated on the GPU.
        expect_close_to_scale(got, ref, p == Precision::TF32 ? 5e-3 : 1e-4,
                              cat(dtype_name(h), trans_b ? " trans_b" : "", " at ", precision_name(p)));
      }
}

TEST(CudaPrecision, SixteenBitActivationsAtEachPrecisionMatchTheCpuReference) {
  SKIP_WITHOUT_GPU();
  Rng rng(12);
  const Tensor a32 = random_cpu(Shape{218, 768}, DType::F32, rng), b32 = random_cpu(Shape{768, 1000}, DType::F32, rng);
  for (DType h : {DType::BF16, DType::F16})
    for (DType bt : {DType::F32, DType::BF16})
      for (bool trans_a : {false, true})
        for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
          const ScopedMatmulPrecision scope(p);
          const Tensor a = (trans_a ? transpose(a32) : a32).to(h), b = b32.to(bt);
          Tensor ref = Tensor::empty(Shape{218, 1000}), got = Tensor::empty(Shape{218, 1000}, DType::F32, Device::CUDA);
          matmul_(ref, a, trans_a, b, false);
          matmul_(got, a.to(Device::CUDA), trans_a, b.to(Device::CUDA), false);
          // As SixteenBitWeightsAtEachPrecisionMatchTheCpuReference.
          const std::string what = cat(dtype_name(h), trans_a ? "^T" : "", " @ ", dtype_name(bt), " at ", precision_name(p));
          expect_close_to_scale(got, ref, p == Precision::TF32 ? 5e-3 : 1e-4, what);
          Tensor ref16 = Tensor::empty(Shape{218, 1000}, DType::BF16);
          Tensor got16 = Tensor::empty(Shape{218, 1000}, DType::BF16, Device::CUDA);
          matmul_(ref16, a, trans_a, b, false);
          matmul_(got16, a.to(Device::CUDA), trans_a, b.to(Device::CUDA), false);
          expect_close_to_scale(got16.to(DType::F32), ref16.to(DType::F32), (p == Precision::TF32 ? 5e-3 : 1e-4) + 8e-3,
                                what + " into bf16");
        }
}

TEST(CudaPrecision, KnownProductsOnTheGpu) {
  SKIP_WITHOUT_GPU();
  const Tensor a = Tensor::full(Shape{128, 512}, 1.0 + std::ldexp(1.0, -9), DType::F32, Device::CUDA);
  const Tensor b = Tensor::full(Shape{512, 64}, 1.0, DType::F32, Device::CUDA);
  expect_close(matmul(a, b), Tensor::full(Shape{128, 64}, 513.0, DType::F32, Device::CUDA), kExact, "fp32");
  {
    const ScopedMatmulPrecision scope(Precision::BF16);
    expect_close(matmul(a, b), Tensor::full(Shape{128, 64}, 512.0, DType::F32, Device::CUDA), kExact, "bf16");
    const Tensor b2 = Tensor::full(Shape{2, 512, 64}, 1.0, DType::F32, Device::CUDA);
    expect_close(batched_matmul(a.reshape(Shape{2, 64, 512}), b2),
                 Tensor::full(Shape{2, 64, 64}, 512.0, DType::F32, Device::CUDA), kExact, "batched bf16");
  }
}

TEST(CudaPrecision, BatchedMatmulAtBf16MatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  Rng rng(6);
  const Tensor a = random_cpu(Shape{6, 33, 70}, DType::F32, rng), b = random_cpu(Shape{6, 70, 17}, DType::F32, rng);
  const ScopedMatmulPrecision scope(Precision::BF16);
  const Tensor ref = batched_matmul(a, b);
  const Tensor got = batched_matmul(a.to(Device::CUDA), b.to(Device::CUDA));
  EXPECT_EQ(got.device(), Device::CUDA);
  expect_close_to_scale(got, ref, 1e-4, "batched_matmul bf16");
}
