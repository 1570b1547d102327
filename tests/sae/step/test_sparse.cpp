// The sparse path of the SAE step (sae/arch/sae_step.h, the sparse_* kernels of sae/step/sae_kernels.h):
//  - the int32 index dtype and the kernels' front-end checks;
//  - sparse_index against the lists by definition, sparse_scatter back to f; sparse_decode and the backward kernels against
//    the dense formulas; Adam mode of the backward kernels against gradient mode followed by
//    adam_step (bit for bit);
//  - SaeStep sparse vs dense on random problems at densities 0.1%, 2%, 20% and 100%: forward
//    values, every gradient, and parameters and moments after two fused Adam steps;
//  - auto mode's choice; training runs with --sparse on vs off, and bit-exact resume with it on;
//  - CUDA: every sparse kernel, the sparse SaeStep and a sparse training run against the CPU
//    (skipped without a GPU).
// Letters: N tokens, D input width, F features.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "nn/adam.h"
#include "sae/train/options.h"
#include "sae/arch/sae_step.h"
#include "sae/train/trainer.h"
#include "tensor/cuda/backend.h"
#include "sae/step/sae_ops.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "io/safetensors.h"
#include "tests/util/standard_sae.h"
#include "tests/util/test_util.h"
#include "tests/util/compare.h"
#include "tests/util/gpu.h"

using namespace sae;
using sae::testing::StandardSae;
using sae::testing::expect_same_saved_weights;
using sae::testing::expect_close_to_scale;
using sae::testing::expect_bitwise_equal;
using sae::testing::bias_for_density;
using sae::testing::fused_backward;
using sae::testing::fused_train_step;
using sae::testing::read_file;
using sae::testing::small_synthetic_config;
using sae::testing::TempDir;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();



// A random SAE and batch; b_enc is set to minus the (1 - density) quantile of all pre-activations
// x W_enc, so that about density * N * F entries of f are > 0 (density 1: all of them).
struct Problem {
  Tensor x, W_enc, b_enc, W_dec, b_dec;
};


Problem make_problem(int64_t n, int64_t d, int64_t f, double density, DType dtype, uint64_t seed) {
  Rng rng(seed);
  Problem p;
  p.x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng, dtype);
  p.W_enc = normal_tensor(Shape{d, f}, 0.0, 1.0 / std::sqrt(double(d)), rng, dtype);
  p.W_dec = normal_tensor(Shape{f, d}, 0.0, 1.0 / std::sqrt(double(f)), rng, dtype);
  p.b_dec = normal_tensor(Shape{d}, 0.0, 0.1, rng, dtype);
  p.b_enc = bias_for_density(p.x, p.W_enc, density);
  // Vary the biases a little per feature, so features differ in how often they fire.
  p.b_enc = add(p.b_enc, normal_tensor(Shape{f}, 0.0, 0.02, rng, dtype));
  return p;
}

// Like make_problem, float32, but with encoder pre-activations x W_enc + b_enc that are exact in any
// summation order (x: multiples of 1/8 up to 2; W_enc: multiples of 1/64 up to 1/16, so every
// partial sum of x W_enc is a multiple of 1/512 below 2^-3 D; b_enc: odd multiples of 1/1024, so no
// pre-activation is 0). f and the ReLU mask are then the same bits on every device and in every
// GEMM order (CudaSaeStep's problems are built the same way).
Problem exact_encoder_problem(int64_t n, int64_t d, int64_t f, double density, uint64_t seed) {
  Rng rng(seed);
  auto grid = [&rng](const Shape& s, int64_t half_range, double step) {
    std::vector<double> v(s.numel());
    for (double& x : v) x = (static_cast<double>(rng.below(2 * half_range + 1)) - half_range) * step;
    return Tensor::from_vector(v, s, DType::F64);
  };
  Problem p;
  p.x = grid(Shape{n, d}, 16, 1.0 / 8);
  p.W_enc = grid(Shape{d, f}, 4, 1.0 / 64);
  std::vector<double> b = bias_for_density(p.x, p.W_enc, density).to_vector();
  for (double& v : b) v = (std::round((v + 0.02 * rng.normal()) * 512.0) + 0.5) / 512.0;
  p.b_enc = Tensor::from_vector(b, Shape{f}, DType::F64);
  p.W_dec = normal_tensor(Shape{f, d}, 0.0, 1.0 / std::sqrt(double(f)), rng, DType::F64);
  p.b_dec = normal_tensor(Shape{d}, 0.0, 0.1, rng, DType::F64);
  for (Tensor* t : {&p.x, &p.W_enc, &p.b_enc, &p.W_dec, &p.b_dec}) *t = t->to(DType::F32);
  return p;
}

std::unique_ptr<StandardSae> model_of(const Problem& p, Device device = Device::CPU) {
  return std::make_unique<StandardSae>(p.W_enc.to(device).clone(), p.b_enc.to(device).clone(),
                                             p.W_dec.to(device).clone(), p.b_dec.to(device).clone());
}

SaeAdamState make_adam(StandardSae& model) { return SaeAdamState::zeros_like(model.params()); }

// Both lists of f by definition (sae_kernels.h: SparseFeatures), as host vectors.
struct ListsByDefinition {
  std::vector<double> col_ptr, rows, vals, row_ptr, cols, row_vals;
};
ListsByDefinition lists_by_definition(const Tensor& f) {
  const int64_t n = f.size(0), features = f.size(1);
  const std::vector<double> v = f.to_vector();
  ListsByDefinition l;
  l.col_ptr.push_back(0);
  for (int64_t j = 0; j < features; ++j) {
    for (int64_t r = 0; r < n; ++r)
      if (v[r * features + j] > 0) {
        l.rows.push_back(double(r));
        l.vals.push_back(v[r * features + j]);
      }
    l.col_ptr.push_back(double(l.rows.size()));
  }
  l.row_ptr.push_back(0);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < features; ++j)
      if (v[r * features + j] > 0) {
        l.cols.push_back(double(j));
        l.row_vals.push_back(v[r * features + j]);
      }
    l.row_ptr.push_back(double(l.cols.size()));
  }
  return l;
}

// Empty lists for f [n, features] with room for `capacity` entries, on `device`; the entry lists
// poisoned (-7 and NaN).
SparseFeatures empty_lists(int64_t n, int64_t features, int64_t capacity, DType dtype, Device device = Device::CPU) {
  SparseFeatures s;
  s.col_ptr = Tensor::empty(Shape{features + 1}, DType::I32, device);
  s.row_ptr = Tensor::empty(Shape{n + 1}, DType::I32, device);
  s.rows = Tensor::from_vector(std::vector<double>(capacity, -7), Shape{capacity}, DType::I32, device);
  s.cols = s.rows.clone();
  s.vals = Tensor::full(Shape{capacity}, kNaN, dtype, device);
  s.row_vals = s.vals.clone();
  return s;
}

// f >= 0 with about `density` of it positive; some positive values tiny, to catch a "> 0" slip.
Tensor random_features(const Shape& s, double density, DType dtype, Rng& rng) {
  std::vector<double> v(s.numel());
  for (double& x : v) x = rng.uniform() < density ? (rng.below(20) == 0 ? 1e-30 : rng.uniform(0.01, 2.0)) : 0.0;
  return Tensor::from_vector(v, s, dtype);
}

Tensor column_counts(const Tensor& f) { return sum(sae::step(f), 0); }

}  // namespace

// ---------------------------------------------------------------- int32 tensors and front-end checks

TEST(SparseOps, Int32TensorsHoldIndicesAndArithmeticRejectsThem) {
  Tensor idx = Tensor::from_vector({3, -1, 7, 2147483647.0}, Shape{4}, DType::I32);
  EXPECT_EQ(idx.dtype(), DType::I32);
  EXPECT_EQ(idx.nbytes(), 16u);
  EXPECT_EQ(idx.describe(), "i32[4] cpu");
  EXPECT_EQ(idx.to_vector(), (std::vector<double>{3, -1, 7, 2147483647.0}));
  EXPECT_EQ(idx.clone().to_vector(), idx.to_vector());
  EXPECT_EQ(idx.data<int32_t>()[2], 7);
  EXPECT_THROW(idx.data<float>(), Error);
  Tensor f = Tensor::full(Shape{4}, 1.0);
  EXPECT_THROW(add(idx, idx), Error);
  EXPECT_THROW(add(f, idx), Error);
  EXPECT_THROW(sum(idx), Error);
  EXPECT_THROW(relu(idx), Error);
  EXPECT_THROW(fill_(idx, 0.0), Error);
  EXPECT_THROW(idx.to(DType::F32), Error);
  EXPECT_THROW(f.to(DType::I32), Error);
  Tensor copy = Tensor::empty(Shape{4}, DType::I32);
  copy_(copy, idx);
  EXPECT_EQ(copy.to_vector(), idx.to_vector());
}

TEST(SparseOps, FrontEndChecksNameTheOpAndOperands) {
  const int64_t n = 5, d = 3, f = 4;
  Tensor feats = Tensor::zeros(Shape{n, f}), counts = Tensor::zeros(Shape{f});
  SparseFeatures s = empty_lists(n, f, 8, DType::F32);
  sparse_index_(s, feats, counts);  // all zeros: no entries
  EXPECT_EQ(s.col_ptr.to_vector(), (std::vector<double>(f + 1, 0.0)));
  EXPECT_EQ(s.row_ptr.to_vector(), (std::vector<double>(n + 1, 0.0)));
  auto message = [](const std::function<void()>& call) {
    try {
      call();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  SparseFeatures bad = s;
  bad.col_ptr = Tensor::empty(Shape{f}, DType::I32);
  EXPECT_NE(message([&] { sparse_index_(bad, feats, counts); }).find("sparse_index: col_ptr should be [5]"),
            std::string::npos);
  bad = s;
  bad.row_ptr = Tensor::empty(Shape{n}, DType::I32);
  EXPECT_NE(message([&] { sparse_index_(bad, feats, counts); }).find("sparse_index: row_ptr should be [6]"),
            std::string::npos);
  bad = s;
  bad.rows = Tensor::zeros(Shape{8});
  EXPECT_NE(message([&] { sparse_index_(bad, feats, counts); }).find("must be i32"), std::string::npos);
  bad = s;
  bad.row_vals = Tensor::zeros(Shape{7});
  EXPECT_NE(message([&] { sparse_index_(bad, feats, counts); }).find("of one length"), std::string::npos);
  bad = s;
  bad.vals = Tensor::zeros(Shape{8}, DType::F64);
  EXPECT_THROW(sparse_index_(bad, feats, counts), Error);
  Tensor x_hat = Tensor::zeros(Shape{n, d}), W_dec = Tensor::zeros(Shape{f, d}), b_dec = Tensor::zeros(Shape{d});
  Tensor wrong_W = Tensor::zeros(Shape{f + 1, d});
  EXPECT_NE(message([&] { sparse_decode_(x_hat, s, wrong_W, b_dec); }).find("sparse_decode: col_ptr"), std::string::npos);
  ParamUpdate W;
  W.param = W_dec;
  W.grad = Tensor::zeros(Shape{f, d + 1});
  Tensor dx = Tensor::zeros(Shape{n, d}), norms = Tensor::zeros(Shape{f}), dpre = Tensor::zeros(Shape{8});
  EXPECT_NE(message([&] { sparse_decoder_backward_(dpre, W, dx, s, norms, counts, 1.0); })
                .find("sparse_decoder_backward: shape mismatch"),
            std::string::npos);
  W.grad = Tensor::zeros(Shape{f, d});
  Tensor short_dpre = Tensor::zeros(Shape{7});
  EXPECT_NE(message([&] { sparse_decoder_backward_(short_dpre, W, dx, s, norms, counts, 1.0); }).find("dpre should be"),
            std::string::npos);
  W.adam = true;  // Adam mode needs the moments
  EXPECT_THROW(sparse_decoder_backward_(dpre, W, dx, s, norms, counts, 1.0), Error);
  ParamUpdate We, be;
  We.param = Tensor::zeros(Shape{d, f});
  We.grad = Tensor::zeros(Shape{d, f});
  be.param = Tensor::zeros(Shape{f + 1});
  be.grad = Tensor::zeros(Shape{f + 1});
  EXPECT_NE(message([&] { sparse_encoder_backward_(We, be, dx, s, dpre); }).find("b_enc should be [4]"),
            std::string::npos);
  Tensor wide = Tensor::zeros(Shape{n, f}, DType::F64);
  EXPECT_NE(message([&] { sparse_scatter_(wide, s, 0); }).find("sparse_scatter: dtype mismatch"), std::string::npos);
  EXPECT_NE(message([&] { sparse_scatter_(feats, s, 1); }).find("sparse_scatter: rows 1 to 6 do not fit row_ptr"),
            std::string::npos);
}

// ---------------------------------------------------------------- the kernels

TEST(SparseKernels, IndexMatchesTheDefinition) {
  Rng rng(11);
  for (DType dtype : {DType::F32, DType::F64}) {
    // Tiny, not multiples of 8, large enough to thread, empty, and all-positive shapes.
    for (auto [n, cols, density] : std::vector<std::tuple<int64_t, int64_t, double>>{
             {1, 1, 1.0}, {7, 13, 0.3}, {300, 1001, 0.02}, {64, 2000, 0.2}, {0, 5, 0.5}, {40, 37, 1.0}, {9, 50, 0.0}}) {
      const std::string what = cat("sparse_index ", dtype_name(dtype), " [", n, ", ", cols, "] density ", density);
      Tensor f = random_features(Shape{n, cols}, density, dtype, rng);
      const ListsByDefinition want = lists_by_definition(f);
      const size_t entries = want.rows.size();
      const int64_t capacity = static_cast<int64_t>(entries) + 5;
      SparseFeatures s = empty_lists(n, cols, capacity, dtype);
      sparse_index_(s, f, column_counts(f));
      EXPECT_EQ(s.col_ptr.to_vector(), want.col_ptr) << what;
      EXPECT_EQ(s.row_ptr.to_vector(), want.row_ptr) << what;
      const std::vector<std::pair<const Tensor*, const std::vector<double>*>> lists = {
          {&s.rows, &want.rows}, {&s.vals, &want.vals}, {&s.cols, &want.cols}, {&s.row_vals, &want.row_vals}};
      for (auto [got_tensor, expected] : lists) {
        const std::vector<double> got = got_tensor->to_vector();
        EXPECT_EQ(std::vector<double>(got.begin(), got.begin() + entries), *expected) << what;
        for (size_t e = entries; e < got.size(); ++e)  // past the last entry: untouched
          EXPECT_TRUE(got[e] == -7 || std::isnan(got[e])) << what;
      }
    }
  }
}

TEST(SparseKernels, IndexReadsBf16FeaturesWidened) {
  // f stored as bf16 (the standard step's f at --precision bf16): the lists (float32) are those of
  // the widened values, bit for bit, tiny positive values included.
  Rng rng(12);
  for (auto [n, cols, density] : std::vector<std::tuple<int64_t, int64_t, double>>{
           {7, 13, 0.3}, {300, 1001, 0.02}, {64, 2000, 0.2}, {0, 5, 0.5}, {40, 37, 1.0}}) {
    const std::string what = cat("sparse_index bf16 [", n, ", ", cols, "] density ", density);
    const Tensor f = random_features(Shape{n, cols}, density, DType::F32, rng).to(DType::BF16);
    const Tensor widened = f.to(DType::F32);
    const ListsByDefinition want = lists_by_definition(widened);
    const size_t entries = want.rows.size();
    SparseFeatures s = empty_lists(n, cols, static_cast<int64_t>(entries) + 5, DType::F32);
    sparse_index_(s, f, column_counts(widened));
    EXPECT_EQ(s.col_ptr.to_vector(), want.col_ptr) << what;
    EXPECT_EQ(s.row_ptr.to_vector(), want.row_ptr) << what;
    for (auto [got_tensor, expected] : std::vector<std::pair<const Tensor*, const std::vector<double>*>>{
             {&s.rows, &want.rows}, {&s.vals, &want.vals}, {&s.cols, &want.cols}, {&s.row_vals, &want.row_vals}}) {
      const std::vector<double> got = got_tensor->to_vector();
      EXPECT_EQ(std::vector<double>(got.begin(), got.begin() + entries), *expected) << what;
    }
  }
  // bf16 lists are refused: the lists hold float32 values.
  const Tensor f = Tensor::full(Shape{2, 3}, 1.0).to(DType::BF16);
  SparseFeatures bad = empty_lists(2, 3, 6, DType::F32);
  bad.vals = Tensor::empty(Shape{6}, DType::BF16);
  EXPECT_THROW(sparse_index_(bad, f, Tensor::full(Shape{3}, 2.0)), Error);
}

namespace {
// Both lists of f, made with the kernel.
SparseFeatures lists_of(const Tensor& f) {
  const int64_t entries = std::max<int64_t>(1, static_cast<int64_t>(sum(sae::step(f.to(Device::CPU))).item()));
  SparseFeatures s = empty_lists(f.size(0), f.size(1), entries, f.dtype(), f.device());
  sparse_index_(s, f, column_counts(f));
  return s;
}
}  // namespace

TEST(SparseKernels, ScatterWritesTheEntriesOfRowsFromRow0AndNothingElse) {
  Rng rng(13);
  for (DType dtype : {DType::F32, DType::F64}) {
    // Rows without entries, every cell an entry, a batch, no rows.
    for (auto [n, cols, density] : std::vector<std::tuple<int64_t, int64_t, double>>{
             {9, 13, 0.3}, {6, 11, 0.0}, {5, 7, 1.0}, {300, 500, 0.02}, {0, 4, 0.5}}) {
      const std::string what = cat("sparse_scatter ", dtype_name(dtype), " N", n, " F", cols, " density ", density);
      const Tensor f = random_features(Shape{n, cols}, density, dtype, rng);
      const SparseFeatures s = lists_of(f);
      Tensor dense = Tensor::zeros(Shape{n, cols}, dtype);
      sparse_scatter_(dense, s, 0);
      expect_bitwise_equal(dense, f, what);
      if (n < 3) continue;
      // Rows 1 .. n-2 into a NaN-filled [n - 2, F]: their entries written, every other cell still NaN.
      Tensor middle = Tensor::full(Shape{n - 2, cols}, kNaN, dtype);
      sparse_scatter_(middle, s, 1);
      const std::vector<double> got = middle.to_vector(), want = f.slice_rows(1, n - 1).to_vector();
      for (size_t i = 0; i < got.size(); ++i) {
        if (want[i] > 0) {
          EXPECT_EQ(got[i], want[i]) << what << " cell " << i;
        } else {
          EXPECT_TRUE(std::isnan(got[i])) << what << " cell " << i << " written: " << got[i];
        }
      }
    }
  }
}

TEST(SparseKernels, DecodeMatchesTheDenseProduct) {
  Rng rng(12);
  for (DType dtype : {DType::F32, DType::F64}) {
    // Feature counts below and above one decode tile (1024), widths not multiples of 64.
    // No rows; and rows with no entries at all (x_hat = b_dec in every row).
    for (auto [n, d, cols, density] : std::vector<std::tuple<int64_t, int64_t, int64_t, double>>{
             {3, 5, 7, 0.5}, {218, 200, 2900, 0.02}, {1100, 130, 300, 0.05}, {64, 64, 64, 1.0}, {0, 8, 8, 0.5},
             {6, 9, 11, 0.0}}) {
      const std::string what = cat("sparse_decode ", dtype_name(dtype), " N", n, " D", d, " F", cols, " density ", density);
      Tensor f = random_features(Shape{n, cols}, density, dtype, rng);
      Tensor W = normal_tensor(Shape{cols, d}, 0.0, 1.0, rng, dtype), b = normal_tensor(Shape{d}, 0.0, 1.0, rng, dtype);
      SparseFeatures s = lists_of(f);
      Tensor x_hat = Tensor::full(Shape{n, d}, kNaN, dtype);
      sparse_decode_(x_hat, s, W, b);
      const double rel = dtype == DType::F32 ? 1e-5 : 1e-13;
      expect_close_to_scale(x_hat, add(matmul(f, W), b), rel, what);
    }
  }
}

namespace {
ParamUpdate gradient_mode(const Tensor& param) {
  ParamUpdate u;
  u.param = param;
  u.grad = Tensor::full(param.shape(), kNaN, param.dtype(), param.device());
  return u;
}

ParamUpdate adam_mode(const Tensor& param, const Tensor& m, const Tensor& v, const AdamScalars& s) {
  ParamUpdate u;
  u.param = param;
  u.m = m;
  u.v = v;
  u.adam = true;
  u.scalars = s;
  return u;
}
}  // namespace

TEST(SparseKernels, AdamModeIsGradientModeThenAdamStepBitForBit) {
  // The fused update must be exactly adam_step applied to the gradient the kernel computes.
  Rng rng(13);
  const int64_t n = 150, d = 40, cols = 700;
  for (DType dtype : {DType::F32, DType::F64}) {
    Tensor f = random_features(Shape{n, cols}, 0.05, dtype, rng);
    Tensor dx = normal_tensor(Shape{n, d}, 0.0, 1.0, rng, dtype), x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng, dtype);
    Tensor W_dec = normal_tensor(Shape{cols, d}, 0.0, 0.1, rng, dtype), W_enc = normal_tensor(Shape{d, cols}, 0.0, 0.1, rng, dtype);
    Tensor b_enc = normal_tensor(Shape{cols}, 0.0, 0.1, rng, dtype);
    Tensor norms = norm2(W_dec, 1), col_sum = sum(f, 0);
    SparseFeatures l = lists_of(f);
    AdamScalars s;
    s.lr = 1e-2;
    s.step = 3;
    s.weight_decay = 0.01;  // the weight-decay term goes through the fused path too
    auto moment = [&](const Shape& shape, double lo) { return uniform_tensor(shape, lo, 1.0, rng, dtype); };

    Tensor dpre_grad = Tensor::full(l.vals.shape(), kNaN, dtype), dpre_adam = dpre_grad.clone();
    ParamUpdate by_grad = gradient_mode(W_dec);
    sparse_decoder_backward_(dpre_grad, by_grad, dx, l, norms, col_sum, 0.7);
    Tensor p = W_dec.clone(), m = moment(W_dec.shape(), -1.0), v = moment(W_dec.shape(), 0.0);
    Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
    adam_step_(p, m, v, by_grad.grad, s);
    ParamUpdate by_adam = adam_mode(p2, m2, v2, s);
    sparse_decoder_backward_(dpre_adam, by_adam, dx, l, norms, col_sum, 0.7);
    expect_bitwise_equal(dpre_adam, dpre_grad, cat("dpre ", dtype_name(dtype)));
    expect_bitwise_equal(p2, p, cat("W_dec after Adam ", dtype_name(dtype)));
    expect_bitwise_equal(m2, m, cat("W_dec m ", dtype_name(dtype)));
    expect_bitwise_equal(v2, v, cat("W_dec v ", dtype_name(dtype)));

    ParamUpdate W_grad = gradient_mode(W_enc), b_grad = gradient_mode(b_enc);
    sparse_encoder_backward_(W_grad, b_grad, x, l, dpre_grad);
    Tensor pw = W_enc.clone(), mw = moment(W_enc.shape(), -1.0), vw = moment(W_enc.shape(), 0.0);
    Tensor pb = b_enc.clone(), mb = moment(b_enc.shape(), -1.0), vb = moment(b_enc.shape(), 0.0);
    Tensor pw2 = pw.clone(), mw2 = mw.clone(), vw2 = vw.clone(), pb2 = pb.clone(), mb2 = mb.clone(), vb2 = vb.clone();
    adam_step_(pw, mw, vw, W_grad.grad, s);
    adam_step_(pb, mb, vb, b_grad.grad, s);
    ParamUpdate W_adam = adam_mode(pw2, mw2, vw2, s), b_adam = adam_mode(pb2, mb2, vb2, s);
    sparse_encoder_backward_(W_adam, b_adam, x, l, dpre_grad);
    expect_bitwise_equal(pw2, pw, cat("W_enc after Adam ", dtype_name(dtype)));
    expect_bitwise_equal(mw2, mw, cat("W_enc m ", dtype_name(dtype)));
    expect_bitwise_equal(vw2, vw, cat("W_enc v ", dtype_name(dtype)));
    expect_bitwise_equal(pb2, pb, cat("b_enc after Adam ", dtype_name(dtype)));
    expect_bitwise_equal(vb2, vb, cat("b_enc v ", dtype_name(dtype)));
  }
}

TEST(SparseKernels, BackwardMatchesTheDenseFormulas) {
  // Gradient mode against the dense expressions of sae_step.h, built from tensor ops. At density 0
  // there are no entries: every gradient is exactly zero, and must still be written (the gradients
  // start as NaN).
  Rng rng(14);
  for (DType dtype : {DType::F32, DType::F64})
    for (double density : {0.1, 0.0}) {
      SCOPED_TRACE(cat(dtype_name(dtype), " density ", density));
      const int64_t n = 90, d = 33, cols = 500;
      const double lambda = 1.3, rel = dtype == DType::F32 ? 1e-5 : 1e-13;
      Tensor f = random_features(Shape{n, cols}, density, dtype, rng);
      Tensor dx = normal_tensor(Shape{n, d}, 0.0, 1.0, rng, dtype), x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng, dtype);
      Tensor W_dec = normal_tensor(Shape{cols, d}, 0.0, 0.1, rng, dtype), W_enc = normal_tensor(Shape{d, cols}, 0.0, 0.1, rng, dtype);
      Tensor norms = norm2(W_dec, 1), col_sum = sum(f, 0);
      SparseFeatures l = lists_of(f);
      Tensor dpre = Tensor::full(l.vals.shape(), kNaN, dtype);
      ParamUpdate W_grad = gradient_mode(W_dec);
      sparse_decoder_backward_(dpre, W_grad, dx, l, norms, col_sum, lambda);
      // dW_dec = f^T dx + lambda (s / n) W_dec
      Tensor want_W_dec = add(matmul(f, dx, true, false), mul(W_dec, mul_scalar(div(col_sum, norms), lambda).reshape(Shape{cols, 1})));
      expect_close_to_scale(W_grad.grad, want_W_dec, rel, cat("dW_dec ", dtype_name(dtype)));
      // dpre = (dx W_dec^T + lambda n) where f > 0, listed by feature
      Tensor dense_dpre = mul(add(matmul(dx, W_dec, false, true), mul_scalar(norms, lambda)), sae::step(f));
      const std::vector<double> dd = dense_dpre.to_vector(), ptr = l.col_ptr.to_vector(), rws = l.rows.to_vector();
      std::vector<double> want_dpre(dpre.numel(), 0.0);
      for (int64_t i = 0; i < cols; ++i)
        for (int64_t e = int64_t(ptr[i]); e < int64_t(ptr[i + 1]); ++e) want_dpre[e] = dd[int64_t(rws[e]) * cols + i];
      const int64_t entries = int64_t(ptr[cols]);
      EXPECT_EQ(entries == 0, density == 0.0);
      expect_close_to_scale(dpre.slice_rows(0, entries),
                            Tensor::from_vector(want_dpre, dpre.shape(), dtype).slice_rows(0, entries), rel,
                            cat("dpre ", dtype_name(dtype)));

      ParamUpdate We = gradient_mode(W_enc), be = gradient_mode(Tensor::zeros(Shape{cols}, dtype));
      sparse_encoder_backward_(We, be, x, l, dpre);
      expect_close_to_scale(We.grad, matmul(x, dense_dpre, true, false), rel, cat("dW_enc ", dtype_name(dtype)));
      expect_close_to_scale(be.grad, sum(dense_dpre, 0), rel, cat("db_enc ", dtype_name(dtype)));
    }
}

TEST(SparseKernels, ResultsDoNotDependOnTheThreadCount) {
  // Every sum has one owner and a data-fixed order: 1, 2 and 3 threads give the same bits.
  Rng rng(15);
  const int64_t n = 700, d = 72, cols = 2100;
  Tensor f = random_features(Shape{n, cols}, 0.03, DType::F32, rng);
  Tensor dx = normal_tensor(Shape{n, d}, 0.0, 1.0, rng), x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng);
  Tensor W_dec = normal_tensor(Shape{cols, d}, 0.0, 0.1, rng), W_enc = normal_tensor(Shape{d, cols}, 0.0, 0.1, rng);
  Tensor b_dec = normal_tensor(Shape{d}, 0.0, 0.1, rng), b_enc = normal_tensor(Shape{cols}, 0.0, 0.1, rng);
  Tensor norms = norm2(W_dec, 1), col_sum = sum(f, 0);
  AdamScalars s;
  s.step = 4;
  std::vector<std::vector<Tensor>> results;
  const int threads_before = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    SparseFeatures l = lists_of(f);
    Tensor x_hat = Tensor::empty(Shape{n, d});
    sparse_decode_(x_hat, l, W_dec, b_dec);
    Tensor dpre = Tensor::full(l.vals.shape(), kNaN);
    ParamUpdate Wd = adam_mode(W_dec.clone(), Tensor::zeros(W_dec.shape()), Tensor::zeros(W_dec.shape()), s);
    sparse_decoder_backward_(dpre, Wd, dx, l, norms, col_sum, 1.5);
    ParamUpdate We = adam_mode(W_enc.clone(), Tensor::zeros(W_enc.shape()), Tensor::zeros(W_enc.shape()), s);
    ParamUpdate be = gradient_mode(b_enc);
    sparse_encoder_backward_(We, be, x, l, dpre);
    results.push_back({l.col_ptr, l.rows, l.vals, l.row_ptr, l.cols, l.row_vals, x_hat, dpre, Wd.param, Wd.m,
                       We.param, We.v, be.grad});
  }
  omp_set_num_threads(threads_before);
  for (size_t r = 1; r < results.size(); ++r)
    for (size_t k = 0; k < results[0].size(); ++k)
      expect_bitwise_equal(results[r][k], results[0][k], cat("result ", k, " with ", r + 1, " threads"));
}

// ---------------------------------------------------------------- SaeStep: sparse vs dense

namespace {
void compare_sparse_with_dense(int64_t n, int64_t d, int64_t f, double density, DType dtype, double lambda,
                               uint64_t seed) {
  const std::string what = cat(dtype_name(dtype), " N", n, " D", d, " F", f, " density ", density);
  const double rel = dtype == DType::F32 ? 2e-5 : 1e-12;
  Problem p = make_problem(n, d, f, density, dtype, seed);
  auto dense = model_of(p), sparse = model_of(p);
  SaeStep dense_step = sae::testing::standard_step(n + 3, d, f, dtype, Device::CPU, SparseMode::Off);
  SaeStep sparse_step = sae::testing::standard_step(n + 3, d, f, dtype, Device::CPU, SparseMode::On);  // workspace larger than the batch
  for (Variable& param : sparse->parameters()) param.grad() = Tensor::full(param.shape(), kNaN, dtype);
  const StepSums a = fused_backward(dense_step, *dense, p.x, lambda);
  const StepSums b = fused_backward(sparse_step, *sparse, p.x, lambda);
  EXPECT_FALSE(a.sparse) << what;
  EXPECT_TRUE(b.sparse) << what;

  // Forward: the encoder is shared (same f bit for bit); the decoder and losses up to order.
  EXPECT_EQ(b.active, a.active) << what;
  const double measured = a.active / double(n * f);
  EXPECT_GT(measured, 0.5 * density) << what;
  EXPECT_LE(measured, std::min(1.0, 1.5 * density + 0.002)) << what;
  expect_bitwise_equal(sparse_step.features(), dense_step.features(), what + " features");
  expect_bitwise_equal(sparse_step.feature_counts(), dense_step.feature_counts(), what + " counts");
  expect_close_to_scale(sparse_step.reconstruction(), dense_step.reconstruction(), rel, what + " x_hat");
  EXPECT_NEAR(b.rec, a.rec, rel * a.rec) << what;
  EXPECT_NEAR(b.l1, a.l1, rel * a.l1 + 1e-300) << what;
  EXPECT_NEAR(b.loss, a.loss, rel * a.loss) << what;

  // Every gradient.
  auto dense_params = dense->named_parameters(), sparse_params = sparse->named_parameters();
  for (size_t i = 0; i < dense_params.size(); ++i)
    expect_close_to_scale(sparse_params[i].second.grad(), dense_params[i].second.grad(), rel,
                          what + " grad " + dense_params[i].first);

  // Two training steps (fused Adam on the sparse side), from the same start: parameters and both
  // moments. The second step also sees m and v decay where the gradient is zero.
  auto dense2 = model_of(p), sparse2 = model_of(p);
  SaeAdamState dense_adam = make_adam(*dense2), sparse_adam = make_adam(*sparse2);
  for (int s = 0; s < 2; ++s) {
    const StepSums da = fused_train_step(dense_step, *dense2, dense_adam, p.x, lambda, 1e-3);
    const StepSums sa = fused_train_step(sparse_step, *sparse2, sparse_adam, p.x, lambda, 1e-3);
    EXPECT_TRUE(sa.sparse) << what;
    EXPECT_NEAR(sa.loss, da.loss, 10 * rel * da.loss) << what << " step " << s;
  }
  EXPECT_EQ(sparse_adam.steps, 2);
  auto dp = dense2->named_parameters(), sp = sparse2->named_parameters();
  for (size_t i = 0; i < dp.size(); ++i) {
    const std::string name = what + " after 2 Adam steps: " + dp[i].first;
    // Adam moves each value by about lr * m / sqrt(v) <= lr per step: 1e-3 of it is a clear slip.
    expect_close_to_scale(sp[i].second.data(), dp[i].second.data(), rel, name, 2e-6);
    expect_close_to_scale(*sparse_adam.m.present()[i].second, *dense_adam.m.present()[i].second, 10 * rel, name + " m");
    expect_close_to_scale(*sparse_adam.v.present()[i].second, *dense_adam.v.present()[i].second, 10 * rel, name + " v");
  }
}
}  // namespace

TEST(SaeStepSparse, MatchesDenseAtDensities0p1_2_20_100PercentFloat64) {
  for (double density : {0.001, 0.02, 0.2, 1.0}) compare_sparse_with_dense(70, 24, 1500, density, DType::F64, 2.0, 1);
}

TEST(SaeStepSparse, MatchesDenseAtDensities0p1_2_20_100PercentFloat32) {
  // Large enough to thread every kernel and to cut x_hat into several decode tiles (N > 512).
  for (double density : {0.001, 0.02, 0.2, 1.0}) compare_sparse_with_dense(600, 40, 2000, density, DType::F32, 3.0, 2);
  compare_sparse_with_dense(218, 96, 1000, 0.02, DType::F32, 0.0, 3);  // lambda = 0
}

TEST(SaeStepSparse, SumsLeftOnTheDeviceMatchInEveryMode) {
  // set_sums_on_device (the trainer's --device-data): the standard step returns pending sums on the
  // dense and the sparse path, and read_sums() gives what a step without it returns, bit for bit,
  // after the same updates (Adam fused into the sparse backward included).
  Problem p = make_problem(120, 24, 600, 0.02, DType::F32, 9);
  for (SparseMode mode : {SparseMode::Off, SparseMode::On, SparseMode::Auto}) {
    SCOPED_TRACE(sparse_mode_name(mode));
    SaeStep plain = sae::testing::standard_step(120, 24, 600, DType::F32, Device::CPU, mode);
    SaeStep kept = sae::testing::standard_step(120, 24, 600, DType::F32, Device::CPU, mode);
    kept.set_sums_on_device(true);
    auto a = model_of(p), b = model_of(p);
    SaeAdamState adam_a = make_adam(*a), adam_b = make_adam(*b);
    for (int step = 0; step < 3; ++step) {
      const StepSums want = fused_train_step(plain, *a, adam_a, p.x, 2.0, 1e-3);
      StepSums got = fused_train_step(kept, *b, adam_b, p.x, 2.0, 1e-3);
      ASSERT_TRUE(got.pending);
      EXPECT_EQ(got.sparse, want.sparse);
      got = kept.read_sums();
      EXPECT_EQ(got.loss, want.loss);
      EXPECT_EQ(got.rec, want.rec);
      EXPECT_EQ(got.l1, want.l1);
      EXPECT_EQ(got.active, want.active);
    }
    auto pa = a->named_parameters(), pb = b->named_parameters();
    for (size_t i = 0; i < pa.size(); ++i) expect_bitwise_equal(pb[i].second.data(), pa[i].second.data(), pa[i].first);
  }
}

TEST(SaeStepSparse, ANonFiniteLossLeftOnTheDeviceIsSeenAtTheNextRead) {
  // A batch whose squared error overflows float32 (rec = inf) while every gradient stays finite
  // (f = 0: W_enc 0, b_enc < 0), then ordinary batches with finite losses. A plain step returns the
  // inf and updates nothing; a step that leaves its sums on the device applies the update, and the
  // next read_sums() has a NaN loss (the flag of UnitStep::pending_sums), after which reads are
  // clean again.
  Rng rng(31);
  const int64_t n = 6, d = 8, f = 16;
  SaeParams start = SaeParams::standard_init(d, f, rng);
  fill_(start.W_enc, 0.0);
  fill_(start.b_enc, -1.0);
  const Tensor huge = Tensor::full(Shape{n, d}, 3e19), ordinary = normal_tensor(Shape{n, d}, 0.0, 1.0, rng);
  SaeStep plain = sae::testing::standard_step(n, d, f, DType::F32, Device::CPU, SparseMode::Off);
  SaeStep kept = sae::testing::standard_step(n, d, f, DType::F32, Device::CPU, SparseMode::Off);
  kept.set_sums_on_device(true);
  SaeParams p = start.clone(), q = start.clone();
  SaeAdamState adam_p = SaeAdamState::zeros_like(p), adam_q = SaeAdamState::zeros_like(q);
  EXPECT_FALSE(std::isfinite(plain.train_step(p, adam_p, huge, 1.0, 1e-3).rec));
  EXPECT_EQ(adam_p.steps, 0);
  EXPECT_TRUE(kept.train_step(q, adam_q, huge, 1.0, 1e-3).pending);
  EXPECT_TRUE(kept.train_step(q, adam_q, ordinary, 1.0, 1e-3).pending);
  EXPECT_EQ(adam_q.steps, 2);  // applied: nothing read the loss first
  const StepSums late = kept.read_sums();
  EXPECT_TRUE(std::isfinite(late.rec)) << "the last batch's own terms are finite";
  EXPECT_FALSE(finite(late)) << "the earlier batch's overflow is reported";
  kept.train_step(q, adam_q, ordinary, 1.0, 1e-3);
  EXPECT_TRUE(finite(kept.read_sums())) << "the flag is cleared by a read";
}

TEST(SaeStepSparse, IsDeterministic) {
  Problem p = make_problem(300, 32, 800, 0.03, DType::F32, 4);
  std::vector<Tensor> first;
  for (int run = 0; run < 2; ++run) {
    auto model = model_of(p);
    SaeAdamState adam = make_adam(*model);
    SaeStep step = sae::testing::standard_step(300, 32, 800, DType::F32, Device::CPU, SparseMode::On);
    for (int s = 0; s < 3; ++s) fused_train_step(step, *model, adam, p.x, 1.0, 1e-3);
    for (size_t i = 0; i < 4; ++i) {
      if (run == 0)
        first.push_back(model->parameters()[i].data().clone());
      else
        expect_bitwise_equal(model->parameters()[i].data(), first[i], "repeated run");
    }
  }
}

TEST(SaeStepSparse, AutoModeChoosesByDensity) {
  for (double density : {0.02, 1.0}) {
    Problem p = make_problem(64, 16, 400, density, DType::F32, 5);
    auto model = model_of(p);
    SaeStep step = sae::testing::standard_step(64, 16, 400, DType::F32, Device::CPU, SparseMode::Auto);
    const StepSums s = fused_backward(step, *model, p.x, 1.0);
    EXPECT_EQ(s.sparse, density < sparse_auto_max_density(step.unit_step())) << density;
    set_sparse_auto_max_density(step.unit_step(), 0.0);  // nothing is sparse enough
    EXPECT_FALSE(step.forward(model->params(), p.x, 1.0).sparse);
  }
  // A shape whose [N, F] cells pass int32 (4096 tokens x 2^19 latents = 2^31): auto stays dense (it
  // had refused the run, the default refusing every standard SAE of 2^19 latents at 4096 tokens),
  // on is refused. The [N, F] buffer is made, not touched.
  {
    const int64_t tokens = 4096, latents = int64_t(1) << 19;
    SaeStep step = sae::testing::standard_step(tokens, 2, latents, DType::F32, Device::CPU, SparseMode::Auto);
    Rng rng(3);
    SaeParams params = SaeParams::standard_init(2, latents, rng);
    std::vector<double> bias(static_cast<size_t>(latents), -1.0);
    for (int i = 0; i < 10; ++i) bias[i] = 1.0;
    params.b_enc = Tensor::from_vector(bias, Shape{latents});
    Tensor x = Tensor::zeros(Shape{2, 2});  // pre-activations = b_enc: 10 of 2^19 fire, density far below 20%
    EXPECT_FALSE(step.forward(params, x, 1.0).sparse);
    EXPECT_THROW(sae::testing::standard_step(tokens, 2, latents, DType::F32, Device::CPU, SparseMode::On), UsageError);
  }
  EXPECT_EQ(parse_sparse_mode("auto"), SparseMode::Auto);
  EXPECT_EQ(std::string(sparse_mode_name(SparseMode::On)), "on");
  EXPECT_THROW(parse_sparse_mode("yes"), UsageError);
}

TEST(SaeStepSparse, NonFiniteLossUpdatesNothing) {
  Problem p = make_problem(20, 8, 50, 0.1, DType::F32, 6);
  auto model = model_of(p);
  SaeAdamState adam = make_adam(*model);
  SaeStep step = sae::testing::standard_step(20, 8, 50, DType::F32, Device::CPU, SparseMode::On);
  Tensor x = p.x.clone();
  x.data<float>()[3] = std::numeric_limits<float>::infinity();
  Tensor before = model->W_dec.data().clone();
  const StepSums s = fused_train_step(step, *model, adam, x, 1.0, 1e-3);
  EXPECT_FALSE(std::isfinite(s.loss));
  EXPECT_EQ(adam.steps, 0);
  expect_bitwise_equal(model->W_dec.data(), before, "W_dec after a non-finite loss");
}

// ---------------------------------------------------------------- training with --sparse

namespace {
TrainConfig sparse_run(const std::string& out, const std::string& sparse) {
  TrainConfig c = small_synthetic_config(out);
  c.features = 256;
  c.lr = 3e-3;
  c.l1 = 2.0;
  c.steps = 150;
  c.checkpoint_every = 1000;
  parse_sparse_mode(sparse);  // refused here when it is not a mode
  c.arch.set("sparse", Json(sparse));
  return c;
}

}  // namespace

TEST(TrainerSparse, OnAndOffGiveTheSameWeights) {
  // Same batches; the runs differ only by float32 summation order carried through 150 Adam steps.
  TempDir dir("sparse_on_off");
  const TrainResult off = train(sparse_run(dir.str("off"), "off"));
  const TrainResult on = train(sparse_run(dir.str("on"), "on"));
  std::printf("nonzero proportion at the last step: %.4f (off), %.4f (on)\n", off.nonzero_proportion,
              on.nonzero_proportion);
  EXPECT_LT(on.nonzero_proportion, 0.2);  // the features did get sparse
  EXPECT_GT(on.nonzero_proportion, 0.0);
  EXPECT_NEAR(on.nonzero_proportion, off.nonzero_proportion, 0.02 * off.nonzero_proportion);
  EXPECT_NEAR(on.fvu, off.fvu, 1e-3 * off.fvu);
  expect_same_saved_weights(off.model_dir, on.model_dir, 1e-5);  // measured: at most 4e-7
  Json config = Json::parse(read_file(dir.str("on/config.json")));
  EXPECT_EQ(config.at("sparse").as_string(), "on");
}

TEST(TrainerSparse, ResumeIsBitExactWithSparseOn) {
  TempDir dir("sparse_resume");
  TrainConfig full = sparse_run(dir.str("full"), "on");
  full.steps = 40;
  train(full);
  TrainConfig cut = full;  // dies at step 25, after its checkpoint at 20
  cut.out = dir.str("cut");
  cut.steps = 25;
  cut.checkpoint_every = 10;
  train(cut);
  std::filesystem::remove_all(dir.str("cut/sae"));
  TrainConfig rest = sparse_run("", "off");  // --resume takes --sparse from the run's config.json
  rest.resume = dir.str("cut");
  give_every_control(rest);
  rest.steps = 40;
  rest.checkpoint_every = 10;
  train(rest);
  EXPECT_EQ(read_file(dir.str("full/sae/sae_weights.safetensors")), read_file(dir.str("cut/sae/sae_weights.safetensors")));
  EXPECT_EQ(read_file(dir.str("full/metrics.csv")), read_file(dir.str("cut/metrics.csv")));
}

TEST(TrainerSparse, OptionIsValidatedAndOldConfigsResumeDense) {
  EXPECT_THROW(sparse_run("x", "sometimes"), UsageError);  // parsed (and refused) once, into the enum
  Json j = sparse_run("x", "on").to_json();
  EXPECT_EQ(TrainConfig::from_json(j).arch.at("sparse").as_string(), "on");
  Json old = Json::object();
  for (const auto& key : {"data", "synthetic", "features", "l1", "lr", "beta1", "beta2", "eps", "steps", "batch",
                          "normalize", "init", "out", "seed", "device", "checkpoint_every", "log_every",
                          "lr_warmup_steps", "lr_decay_steps", "l1_warmup_steps", "dead_window", "progress"})
    old[key] = j.at(key);
  EXPECT_EQ(TrainConfig::from_json(old).arch.at("sparse").as_string(), "off");  // written before --sparse existed: dense
}

TEST(TrainerSparse, CommandLineOption) {
  TempDir dir("sparse_cli");
  const std::string tiny =
      " --synthetic-d 8 --synthetic-concepts 12 --synthetic-story-concepts 2 --synthetic-story-active 1"
      " --synthetic-stories 50 --synthetic-mean-length 8 --synthetic-active 2 --features 16 --lr 1e-3"
      " --steps 3 --progress none --device cpu";
  auto help = sae::testing::run_binary("sae_train", "--help", dir);
  EXPECT_NE(help.out.find("--sparse"), std::string::npos);
  auto ok = sae::testing::run_binary("sae_train", tiny + " --sparse on --out " + dir.str("run"), dir);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(Json::parse(read_file(dir.str("run/config.json"))).at("sparse").as_string(), "on");
  auto bad = sae::testing::run_binary("sae_train", tiny + " --sparse sometimes --out " + dir.str("bad"), dir);
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--sparse: expected auto, on or off, got 'sometimes'"), std::string::npos) << bad.err;
}

// ---------------------------------------------------------------- CUDA parity

TEST(CudaSparse, KernelsMatchCpu) {
  SKIP_WITHOUT_GPU();
  Rng rng(21);
  for (DType dtype : {DType::F32, DType::F64}) {
    const double rel = dtype == DType::F32 ? 1e-5 : 1e-13;
    // One story at the study's width, a batch cut into slices (N > 256), tiny and odd shapes.
    for (auto [n, d, cols, density] : std::vector<std::tuple<int64_t, int64_t, int64_t, double>>{
             {218, 768, 10000, 0.02}, {1100, 40, 333, 0.05}, {5, 7, 9, 0.5}, {64, 33, 70, 1.0}, {3, 300, 40, 0.0}}) {
      const std::string what = cat(dtype_name(dtype), " N", n, " D", d, " F", cols, " density ", density);
      Tensor f = random_features(Shape{n, cols}, density, dtype, rng);
      Tensor W_dec = normal_tensor(Shape{cols, d}, 0.0, 0.1, rng, dtype), b_dec = normal_tensor(Shape{d}, 0.0, 1.0, rng, dtype);
      Tensor W_enc = normal_tensor(Shape{d, cols}, 0.0, 0.1, rng, dtype), b_enc = normal_tensor(Shape{cols}, 0.0, 0.1, rng, dtype);
      Tensor dx = normal_tensor(Shape{n, d}, 0.0, 1.0, rng, dtype), x = normal_tensor(Shape{n, d}, 0.0, 1.0, rng, dtype);
      Tensor norms = norm2(W_dec, 1), col_sum = sum(f, 0);
      SparseFeatures cpu = lists_of(f);
      Tensor f_gpu = f.to(Device::CUDA);
      SparseFeatures gpu = lists_of(f_gpu);
      expect_bitwise_equal(gpu.col_ptr, cpu.col_ptr, what + " col_ptr");
      expect_bitwise_equal(gpu.row_ptr, cpu.row_ptr, what + " row_ptr");
      const int64_t entries = static_cast<int64_t>(cpu.col_ptr.to_vector().back());
      if (entries > 0) {
        expect_bitwise_equal(gpu.rows.slice_rows(0, entries), cpu.rows.slice_rows(0, entries), what + " rows");
        expect_bitwise_equal(gpu.vals.slice_rows(0, entries), cpu.vals.slice_rows(0, entries), what + " vals");
        expect_bitwise_equal(gpu.cols.slice_rows(0, entries), cpu.cols.slice_rows(0, entries), what + " cols");
        expect_bitwise_equal(gpu.row_vals.slice_rows(0, entries), cpu.row_vals.slice_rows(0, entries),
                             what + " row_vals");
      }

      Tensor x_hat_cpu = Tensor::empty(Shape{n, d}, dtype), x_hat_gpu = Tensor::full(Shape{n, d}, kNaN, dtype, Device::CUDA);
      sparse_decode_(x_hat_cpu, cpu, W_dec, b_dec);
      sparse_decode_(x_hat_gpu, gpu, W_dec.to(Device::CUDA), b_dec.to(Device::CUDA));
      if (n > 0) expect_close_to_scale(x_hat_gpu, x_hat_cpu, rel, what + " x_hat");

      // f again from its lists, all rows and rows 1 .. n-1 (into -7: only the entries written).
      Tensor f_again = Tensor::zeros(Shape{n, cols}, dtype, Device::CUDA);
      sparse_scatter_(f_again, gpu, 0);
      expect_bitwise_equal(f_again, f, what + " scatter");
      if (n > 1) {
        Tensor tail_cpu = Tensor::full(Shape{n - 1, cols}, -7.0, dtype);
        Tensor tail_gpu = Tensor::full(Shape{n - 1, cols}, -7.0, dtype, Device::CUDA);
        sparse_scatter_(tail_cpu, cpu, 1);
        sparse_scatter_(tail_gpu, gpu, 1);
        expect_bitwise_equal(tail_gpu, tail_cpu, what + " scatter from row 1");
      }

      // Gradient mode, then Adam mode, on both devices.
      for (bool adam : {false, true}) {
        const std::string mode = adam ? " adam" : " grad";
        AdamScalars s;
        s.lr = 1e-2;
        s.step = 2;
        Tensor m0 = uniform_tensor(W_dec.shape(), -1, 1, rng, dtype), v0 = uniform_tensor(W_dec.shape(), 0, 1, rng, dtype);
        Tensor me0 = uniform_tensor(W_enc.shape(), -1, 1, rng, dtype), ve0 = uniform_tensor(W_enc.shape(), 0, 1, rng, dtype);
        Tensor mb0 = uniform_tensor(b_enc.shape(), -1, 1, rng, dtype), vb0 = uniform_tensor(b_enc.shape(), 0, 1, rng, dtype);
        auto update = [&](const Tensor& param, const Tensor& m, const Tensor& v, Device dev) {
          if (adam) return adam_mode(param.to(dev).clone(), m.to(dev).clone(), v.to(dev).clone(), s);
          return gradient_mode(param.to(dev).clone());
        };
        ParamUpdate Wd_cpu = update(W_dec, m0, v0, Device::CPU), Wd_gpu = update(W_dec, m0, v0, Device::CUDA);
        Tensor dpre_cpu = Tensor::full(cpu.vals.shape(), kNaN, dtype);
        Tensor dpre_gpu = Tensor::full(gpu.vals.shape(), kNaN, dtype, Device::CUDA);
        sparse_decoder_backward_(dpre_cpu, Wd_cpu, dx, cpu, norms, col_sum, 0.9);
        sparse_decoder_backward_(dpre_gpu, Wd_gpu, dx.to(Device::CUDA), gpu, norms.to(Device::CUDA),
                                 col_sum.to(Device::CUDA), 0.9);
        if (entries > 0)
          expect_close_to_scale(dpre_gpu.slice_rows(0, entries), dpre_cpu.slice_rows(0, entries), rel, what + mode + " dpre");
        ParamUpdate We_cpu = update(W_enc, me0, ve0, Device::CPU), We_gpu = update(W_enc, me0, ve0, Device::CUDA);
        ParamUpdate be_cpu = update(b_enc, mb0, vb0, Device::CPU), be_gpu = update(b_enc, mb0, vb0, Device::CUDA);
        sparse_encoder_backward_(We_cpu, be_cpu, x, cpu, dpre_cpu);
        sparse_encoder_backward_(We_gpu, be_gpu, x.to(Device::CUDA), gpu, dpre_cpu.to(Device::CUDA));
        for (auto [name, g, c] : {std::tuple{"W_dec", &Wd_gpu, &Wd_cpu}, std::tuple{"W_enc", &We_gpu, &We_cpu},
                                  std::tuple{"b_enc", &be_gpu, &be_cpu}}) {
          if (adam) {
            expect_close_to_scale(g->param, c->param, rel, what + mode + " " + name, 1e-3 * s.lr);
            expect_close_to_scale(g->m, c->m, rel, what + mode + " " + name + " m");
            expect_close_to_scale(g->v, c->v, rel, what + mode + " " + name + " v");
          } else {
            expect_close_to_scale(g->grad, c->grad, rel, what + mode + " " + name + " grad");
          }
        }
      }
    }
  }
}

TEST(CudaSparse, IndexOfBf16FeaturesMatchesCpu) {
  // f stored as bf16 (the standard step's f at --precision bf16), float32 lists: bit for bit.
  SKIP_WITHOUT_GPU();
  Rng rng(22);
  for (auto [n, cols, density] : std::vector<std::tuple<int64_t, int64_t, double>>{
           {218, 10000, 0.02}, {1100, 333, 0.05}, {5, 9, 0.5}, {64, 70, 1.0}, {3, 40, 0.0}}) {
    const std::string what = cat("bf16 N", n, " F", cols, " density ", density);
    const Tensor f = random_features(Shape{n, cols}, density, DType::F32, rng).to(DType::BF16);
    const Tensor counts = column_counts(f.to(DType::F32));
    const int64_t entries = static_cast<int64_t>(sum(counts).item());
    SparseFeatures cpu = empty_lists(n, cols, entries + 1, DType::F32);
    SparseFeatures gpu = empty_lists(n, cols, entries + 1, DType::F32, Device::CUDA);
    sparse_index_(cpu, f, counts);
    sparse_index_(gpu, f.to(Device::CUDA), counts.to(Device::CUDA));
    expect_bitwise_equal(gpu.col_ptr, cpu.col_ptr, what + " col_ptr");
    expect_bitwise_equal(gpu.row_ptr, cpu.row_ptr, what + " row_ptr");
    if (entries == 0) continue;
    expect_bitwise_equal(gpu.rows.slice_rows(0, entries), cpu.rows.slice_rows(0, entries), what + " rows");
    expect_bitwise_equal(gpu.vals.slice_rows(0, entries), cpu.vals.slice_rows(0, entries), what + " vals");
    expect_bitwise_equal(gpu.cols.slice_rows(0, entries), cpu.cols.slice_rows(0, entries), what + " cols");
    expect_bitwise_equal(gpu.row_vals.slice_rows(0, entries), cpu.row_vals.slice_rows(0, entries), what + " row_vals");
  }
}

TEST(CudaSparse, SaeStepMatchesCpu) {
  SKIP_WITHOUT_GPU();
  // The encoder is exact (exact_encoder_problem), so f and the active entries are the same on both
  // devices, and what is left is the rounding of the decoder side and the gradient sums: the
  // tolerance of the dense CudaSaeStep comparison. Measured on the CPU, the float32 sparse step
  // against the float64 one on these problems (the same active entries): gradients within 9e-7 of
  // their largest value, x_hat within 2e-6 (density 1).
  const double rel = 3e-5;
  for (auto [n, density] : std::vector<std::pair<int64_t, double>>{{218, 0.02}, {1100, 0.001}, {300, 1.0}}) {
    const int64_t d = 64, f = 2000;
    const std::string what = cat("sparse SaeStep N", n, " density ", density);
    Problem p = exact_encoder_problem(n, d, f, density, 30 + n);
    auto cpu_model = model_of(p), gpu_model = model_of(p, Device::CUDA);
    SaeStep cpu_step = sae::testing::standard_step(n, d, f, DType::F32, Device::CPU, SparseMode::On);
    SaeStep gpu_step = sae::testing::standard_step(n, d, f, DType::F32, Device::CUDA, SparseMode::On);
    for (Variable& param : gpu_model->parameters())
      param.grad() = Tensor::full(param.shape(), kNaN, DType::F32, Device::CUDA);
    const StepSums c = fused_backward(cpu_step, *cpu_model, p.x, 2.0);
    const StepSums g = fused_backward(gpu_step, *gpu_model, p.x.to(Device::CUDA), 2.0);
    EXPECT_TRUE(g.sparse) << what;
    EXPECT_EQ(g.active, c.active) << what;  // the mask is exact by construction
    EXPECT_GT(c.active, 0.5 * density * double(n * f)) << what;
    EXPECT_NEAR(g.rec, c.rec, rel * c.rec) << what;
    EXPECT_NEAR(g.l1, c.l1, rel * c.l1) << what;
    expect_bitwise_equal(gpu_step.features(), cpu_step.features(), what + " features");
    expect_close_to_scale(gpu_step.reconstruction(), cpu_step.reconstruction(), rel, what + " x_hat");
    auto cp = cpu_model->named_parameters(), gp = gpu_model->named_parameters();
    for (size_t i = 0; i < cp.size(); ++i)
      expect_close_to_scale(gp[i].second.grad(), cp[i].second.grad(), rel, what + " grad " + cp[i].first);
    // No atomics: a second run gives the same bits.
    std::vector<Tensor> first;
    for (auto& [name, param] : gp) first.push_back(param.grad().to(Device::CPU));
    fused_backward(gpu_step, *gpu_model, p.x.to(Device::CUDA), 2.0);
    for (size_t i = 0; i < first.size(); ++i) expect_bitwise_equal(gp[i].second.grad(), first[i], what + " repeated");
  }
}

TEST(CudaSparse, TrainingFollowsTheCpu) {
  SKIP_WITHOUT_GPU();
  TempDir dir("cuda_sparse_train");
  TrainConfig c = sparse_run(dir.str("cpu"), "on");
  const TrainResult cpu = train(c);
  c.device = DeviceChoice::Cuda;
  c.out = dir.str("cuda");
  const TrainResult gpu = train(c);
  EXPECT_EQ(gpu.device, Device::CUDA);
  EXPECT_NEAR(gpu.fvu, cpu.fvu, 1e-3 * cpu.fvu);
  expect_same_saved_weights(cpu.model_dir, gpu.model_dir, 1e-4);
}

// The CUDA kernels treat what the CPU keeps or drops the same way: a width-0 decoder still writes
// dpre (the L1 term alone).
TEST(CudaSparse, ZeroWidthDecoderStillWritesDpre) {
  SKIP_WITHOUT_GPU();
  Rng rng(23);
  const int64_t n = 12, d = 0, cols = 30;
  Tensor f = random_features(Shape{n, cols}, 0.3, DType::F32, rng);
  Tensor W_dec = Tensor::zeros(Shape{cols, d}), dx = Tensor::zeros(Shape{n, d});
  Tensor norms = norm2(W_dec, 1), col_sum = sum(f, 0);
  SparseFeatures cpu = lists_of(f), gpu = lists_of(f.to(Device::CUDA));
  const int64_t entries = static_cast<int64_t>(cpu.col_ptr.to_vector().back());
  ASSERT_GT(entries, 0);
  ParamUpdate w_cpu = gradient_mode(W_dec.clone()), w_gpu = gradient_mode(W_dec.to(Device::CUDA));
  Tensor dpre_cpu = Tensor::full(cpu.vals.shape(), kNaN, DType::F32);
  Tensor dpre_gpu = Tensor::full(gpu.vals.shape(), kNaN, DType::F32, Device::CUDA);
  sparse_decoder_backward_(dpre_cpu, w_cpu, dx, cpu, norms, col_sum, 0.9);
  sparse_decoder_backward_(dpre_gpu, w_gpu, dx.to(Device::CUDA), gpu, norms.to(Device::CUDA), col_sum.to(Device::CUDA),
                           0.9);
  expect_bitwise_equal(dpre_gpu.slice_rows(0, entries), dpre_cpu.slice_rows(0, entries), "dpre with d = 0");
}
