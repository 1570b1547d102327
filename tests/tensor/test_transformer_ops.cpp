// The transformer ops of the tensor library (tensor/ops.h: embedding, layer_norm, gelu_new,
// gelu, softmax, batched_matmul, attention_mask, swap_axes01, rotary) on the CPU, against hand-worked values and
// against plain float64 loops written here from the ops' definitions, in float32 and float64; and
// the errors their front-ends throw. (Gradients: tests/autograd/test_gradcheck_transformer.cpp;
// CUDA: test_cuda_parity_transformer.cpp.)
#include <gtest/gtest.h>

#include <cmath>
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

Tensor ids_of(const std::vector<double>& ids) {
  return Tensor::from_vector(ids, Shape{static_cast<int64_t>(ids.size())}, DType::I32);
}

// GPT-2's gelu in its own (tanh) form, in double.
double gelu_tanh_form(double z) {
  return 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
}

// The mask rule, written out independently of the kernels: query row r of Tq (position
// Tk - Tq + r) sees key j.
bool key_visible(int64_t r, int64_t j, int64_t tq, int64_t tk, int64_t window) {
  const int64_t position = tk - tq + r;
  if (j > position) return false;
  return window == 0 || position - j < window;
}

}  // namespace

TEST(TransformerOps, EmbeddingGathersRowsAndChecksIds) {
  for (DType d : kDTypes) {
    Tensor table = Tensor::from_vector({0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42}, Shape{5, 3}, d);
    Tensor out = embedding(table, ids_of({4, 0, 4, 2}));
    EXPECT_EQ(out.shape(), (Shape{4, 3}));
    EXPECT_EQ(out.to_vector(), (std::vector<double>{40, 41, 42, 0, 1, 2, 40, 41, 42, 20, 21, 22}));
    EXPECT_EQ(embedding(table, ids_of({})).shape(), (Shape{0, 3}));
    EXPECT_THROW(embedding(table, ids_of({1, 5})), Error);   // one past the end
    EXPECT_THROW(embedding(table, ids_of({-1})), Error);
    EXPECT_THROW(embedding(table, Tensor::from_vector({1, 2}, Shape{2}, d)), Error);  // ids must be int32
    EXPECT_THROW(embedding(table.reshape(Shape{15}), ids_of({1})), Error);
    Tensor wrong = Tensor::empty(Shape{2, 2}, d);
    EXPECT_THROW(embedding_(wrong, table, ids_of({1, 2})), Error);
  }
  try {
    embedding(Tensor::zeros(Shape{5, 3}), ids_of({0, 7}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("id 7 at position 1"), std::string::npos) << e.what();
  }
}

TEST(TransformerOps, EmbeddingBackwardAccumulatesRepeatedIdsInOrder) {
  for (DType d : kDTypes) {
    Tensor grad = Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8}, Shape{4, 2}, d);
    Tensor table_grad = Tensor::full(Shape{3, 2}, 0.5, d);  // accumulates onto what is there
    embedding_backward_(table_grad, grad, ids_of({2, 0, 2, 2}));
    // row 0 <- grad row 1; row 1 untouched; row 2 <- grad rows 0, 2, 3
    EXPECT_EQ(table_grad.to_vector(), (std::vector<double>{3.5, 4.5, 0.5, 0.5, 1 + 5 + 7 + 0.5, 2 + 6 + 8 + 0.5}));
    EXPECT_THROW(embedding_backward_(table_grad, grad, ids_of({0, 1, 3, 0})), Error);
    EXPECT_THROW(embedding_backward_(table_grad, grad, ids_of({0, 1, 2})), Error);  // grad has 4 rows
  }
  // Large enough for the threaded path: compare with a serial float64 sum.
  Rng rng(7);
  const int64_t n = 3000, d = 40, v = 17;
  std::vector<double> ids(n);
  for (double& id : ids) id = static_cast<double>(rng.below(v));
  Tensor grad = random_cpu(Shape{n, d}, DType::F64, rng);
  Tensor table_grad = Tensor::zeros(Shape{v, d}, DType::F64);
  embedding_backward_(table_grad, grad, ids_of(ids));
  std::vector<double> want(v * d, 0.0), g = grad.to_vector();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < d; ++c) want[static_cast<int64_t>(ids[i]) * d + c] += g[i * d + c];
  EXPECT_EQ(table_grad.to_vector(), want);  // same order of additions: bit for bit
}

TEST(TransformerOps, LayerNormByHandAndAgainstFloat64Loops) {
  // x = [1, 2, 3, 4]: mean 2.5, biased var 1.25; eps 0.
  for (DType d : kDTypes) {
    Tensor x = Tensor::from_vector({1, 2, 3, 4}, Shape{1, 4}, d);
    Tensor w = Tensor::from_vector({1, 2, 1, 0.5}, Shape{4}, d), b = Tensor::from_vector({0, 0, 1, -1}, Shape{4}, d);
    Tensor out = Tensor::empty(x.shape(), d), mean = Tensor::empty(Shape{1}, d), rstd = Tensor::empty(Shape{1}, d);
    layer_norm_(out, mean, rstd, x, w, b, 0.0);
    const double s = 1.0 / std::sqrt(1.25);
    expect_close(out, Tensor::from_vector({-1.5 * s, -0.5 * s * 2, 0.5 * s + 1, 1.5 * s * 0.5 - 1}, Shape{1, 4}, d),
                 tol_for(d), "layer_norm by hand");
    EXPECT_NEAR(mean.item(), 2.5, 1e-7);
    EXPECT_NEAR(rstd.item(), s, 1e-6);
  }
  Rng rng(1);
  for (DType d : kDTypes) {
    for (const Shape& shape : {Shape{7, 33}, Shape{3, 5, 768}, Shape{2, 1}, Shape{300, 200}}) {
      const int64_t width = shape[shape.ndim - 1], rows = shape.numel() / width;
      Tensor x = random_cpu(shape, d, rng, -3.0, 5.0);  // off-centre: the mean matters
      Tensor w = random_cpu(Shape{width}, d, rng, 0.5, 1.5), b = random_cpu(Shape{width}, d, rng);
      const double eps = 1e-5;
      std::vector<double> xv = x.to_vector(), wv = w.to_vector(), bv = b.to_vector(), want(xv.size());
      for (int64_t r = 0; r < rows; ++r) {
        double mu = 0, var = 0;
        for (int64_t j = 0; j < width; ++j) mu += xv[r * width + j] / width;
        for (int64_t j = 0; j < width; ++j) var += (xv[r * width + j] - mu) * (xv[r * width + j] - mu) / width;
        for (int64_t j = 0; j < width; ++j)
          want[r * width + j] = (xv[r * width + j] - mu) / std::sqrt(var + eps) * wv[j] + bv[j];
      }
      expect_close(layer_norm(x, w, b, eps), Tensor::from_vector(want, shape, d), Tolerance{1e-5, 1e-5},
                   cat("layer_norm ", dtype_name(d), shape.str()));
      if (d == DType::F64)
        expect_close(layer_norm(x, w, b, eps), Tensor::from_vector(want, shape, d), tol_for(d), "layer_norm f64");
      Tensor in_place = x.clone(), mean = Tensor::empty(Shape{rows}, d), rstd = Tensor::empty(Shape{rows}, d);
      layer_norm_(in_place, mean, rstd, in_place, w, b, eps);
      expect_close(in_place, layer_norm(x, w, b, eps), sae::testing::kExact, "layer_norm in place");
    }
  }
  Tensor x = Tensor::zeros(Shape{2, 4});
  EXPECT_THROW(layer_norm(x, Tensor::zeros(Shape{3}), Tensor::zeros(Shape{4}), 1e-5), Error);
  EXPECT_THROW(layer_norm(x, Tensor::zeros(Shape{4}), Tensor::zeros(Shape{4}, DType::F64), 1e-5), Error);
  EXPECT_THROW(layer_norm(x, Tensor::zeros(Shape{4}), Tensor::zeros(Shape{4}), -1.0), Error);
  EXPECT_THROW(layer_norm(x, Tensor::zeros(Shape{4}), Tensor::zeros(Shape{4}), NAN), Error);
  // A constant row has var 0: with eps > 0 the output is exactly the bias.
  Tensor flat = Tensor::full(Shape{1, 4}, 3.0);
  expect_close(layer_norm(flat, Tensor::full(Shape{4}, 2.0), Tensor::full(Shape{4}, 0.25), 1e-5),
               Tensor::full(Shape{1, 4}, 0.25), sae::testing::kExact, "constant row");
}

TEST(TransformerOps, GeluNewMatchesTheTanhFormAndItsDerivative) {
  // Values of 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) from Python's math module.
  const std::vector<double> z = {-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0};
  const std::vector<double> want = {-0.0036373920817729943, -0.15880800939172324, -0.15428599017485606, 0.0,
                                    0.34571400982514394,  0.8411919906082768,   2.996362607918227};
  for (DType d : kDTypes) {
    expect_close(gelu_new(Tensor::from_vector(z, Shape{7}, d)), Tensor::from_vector(want, Shape{7}, d),
                 d == DType::F32 ? Tolerance{1e-7, 3e-7} : Tolerance{1e-16, 1e-15}, "gelu_new literals");
  }
  // A dense sweep, float64, against the tanh form and a central difference of it.
  std::vector<double> xs, values, slopes;
  for (double x = -12.0; x <= 12.0; x += 0.01) {
    xs.push_back(x);
    values.push_back(gelu_tanh_form(x));
    const double h = 1e-6;
    slopes.push_back((gelu_tanh_form(x + h) - gelu_tanh_form(x - h)) / (2 * h));
  }
  const Shape s{static_cast<int64_t>(xs.size())};
  Tensor x = Tensor::from_vector(xs, s, DType::F64);
  expect_close(gelu_new(x), Tensor::from_vector(values, s, DType::F64), Tolerance{1e-15, 1e-13}, "gelu_new sweep");
  expect_close(gelu_new_grad(x), Tensor::from_vector(slopes, s, DType::F64), Tolerance{1e-8, 1e-8}, "gelu_new_grad");
  expect_close(gelu_new(x.to(DType::F32)), Tensor::from_vector(values, s, DType::F32), Tolerance{1e-7, 1e-6},
               "gelu_new sweep f32");
  // The tails: no NaN from overflowing exp, and the limits 0 and z (slopes 0 and 1).
  const std::vector<double> tails = {-1e30, -1e10, -100.0, 100.0, 1e10, 1e30};
  for (DType d : kDTypes) {
    Tensor t = Tensor::from_vector(tails, Shape{6}, d);
    expect_close(gelu_new(t), Tensor::from_vector({0, 0, 0, 100, 1e10, 1e30}, Shape{6}, d), Tolerance{1e-30, 1e-7},
                 "gelu_new tails");
    expect_close(gelu_new_grad(t), Tensor::from_vector({0, 0, 0, 1, 1, 1}, Shape{6}, d), Tolerance{1e-30, 0},
                 "gelu_new_grad tails");
  }
}

TEST(TransformerOps, SoftmaxRowsAgainstFloat64AndMaskedEntriesAreExactlyZero) {
  Rng rng(2);
  for (DType d : kDTypes) {
    for (const Shape& shape : {Shape{5, 7}, Shape{2, 3, 218}, Shape{1}, Shape{400, 300}}) {
      Tensor x = random_cpu(shape, d, rng, -20.0, 20.0);
      const int64_t width = shape[shape.ndim - 1], rows = shape.numel() / width;
      std::vector<double> xv = x.to_vector(), want(xv.size());
      for (int64_t r = 0; r < rows; ++r) {
        double top = -INFINITY, sum = 0;
        for (int64_t j = 0; j < width; ++j) top = std::max(top, xv[r * width + j]);
        for (int64_t j = 0; j < width; ++j) sum += std::exp(xv[r * width + j] - top);
        for (int64_t j = 0; j < width; ++j) want[r * width + j] = std::exp(xv[r * width + j] - top) / sum;
      }
      expect_close(softmax(x), Tensor::from_vector(want, shape, d), tol_for(d), cat("softmax ", shape.str()));
      Tensor in_place = x.clone();
      softmax_(in_place, in_place);
      expect_close(in_place, softmax(x), sae::testing::kExact, "softmax in place");
    }
    // Large values do not overflow; -inf gives exactly 0; a row of -inf gives NaN (as PyTorch).
    const double inf = INFINITY;
    Tensor x = Tensor::from_vector({1000, 999, -inf, 0, -inf, -999, -inf, -inf, -inf}, Shape{3, 3}, d);
    std::vector<double> p = softmax(x).to_vector();
    const double e = std::exp(-1.0);
    EXPECT_NEAR(p[0], 1 / (1 + e), 1e-7);
    EXPECT_NEAR(p[1], e / (1 + e), 1e-7);
    EXPECT_EQ(p[2], 0.0);
    EXPECT_EQ(p[3], 1.0);  // exp(-999) underflows to 0 next to exp(0)
    EXPECT_EQ(p[4], 0.0);
    EXPECT_EQ(p[5], 0.0);
    EXPECT_TRUE(std::isnan(p[6]) && std::isnan(p[7]) && std::isnan(p[8]));
  }
}

TEST(TransformerOps, BatchedMatmulEveryTransposeCaseAgainstLoops) {
  Rng rng(3);
  const int64_t batch = 5, m = 7, k = 4, n = 6;
  for (DType d : kDTypes) {
    for (int flags = 0; flags < 4; ++flags) {
      const bool ta = flags & 1, tb = flags & 2;
      Tensor a = random_cpu(ta ? Shape{batch, k, m} : Shape{batch, m, k}, d, rng);
      Tensor b = random_cpu(tb ? Shape{batch, n, k} : Shape{batch, k, n}, d, rng);
      std::vector<double> av = a.to_vector(), bv = b.to_vector(), want(batch * m * n, 0.0);
      for (int64_t s = 0; s < batch; ++s)
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double acc = 0;
            for (int64_t p = 0; p < k; ++p) {
              const double x = ta ? av[(s * k + p) * m + i] : av[(s * m + i) * k + p];
              const double y = tb ? bv[(s * n + j) * k + p] : bv[(s * k + p) * n + j];
              acc += x * y;
            }
            want[(s * m + i) * n + j] = acc;
          }
      const std::string what = cat("batched_matmul ", dtype_name(d), " trans_a ", ta, " trans_b ", tb);
      Tensor got = batched_matmul(a, b, ta, tb);
      expect_close(got, Tensor::from_vector(want, Shape{batch, m, n}, d), tol_for(d), what);
      // alpha and beta: out = 2 * product - 0.5 * out
      Tensor acc = random_cpu(Shape{batch, m, n}, d, rng);
      std::vector<double> before = acc.to_vector();
      batched_matmul_(acc, a, ta, b, tb, 2.0, -0.5);
      for (size_t i = 0; i < want.size(); ++i) want[i] = 2 * want[i] - 0.5 * before[i];
      expect_close(acc, Tensor::from_vector(want, Shape{batch, m, n}, d), tol_for(d), what + " alpha beta");
    }
    // One batch entry (the serial path), and k = 0 (the product is zero, out = beta * out).
    Tensor a = random_cpu(Shape{1, 3, 2}, d, rng), b = random_cpu(Shape{1, 2, 4}, d, rng);
    expect_close(batched_matmul(a, b), matmul(a.reshape(Shape{3, 2}), b.reshape(Shape{2, 4})).reshape(Shape{1, 3, 4}),
                 tol_for(d), "one batch entry");
    Tensor out = Tensor::full(Shape{2, 3, 4}, 3.0, d);
    batched_matmul_(out, Tensor::zeros(Shape{2, 3, 0}, d), false, Tensor::zeros(Shape{2, 0, 4}, d), false, 1.0, 0.5);
    expect_close(out, Tensor::full(Shape{2, 3, 4}, 1.5, d), sae::testing::kExact, "k = 0");
  }
  Tensor a = Tensor::zeros(Shape{2, 3, 4}), b = Tensor::zeros(Shape{2, 4, 5});
  EXPECT_THROW(batched_matmul(a, Tensor::zeros(Shape{3, 4, 5})), Error);   // batch sizes differ
  EXPECT_THROW(batched_matmul(a, Tensor::zeros(Shape{2, 5, 5})), Error);   // inner dims differ
  EXPECT_THROW(batched_matmul(a.reshape(Shape{6, 4}), b), Error);           // not 3-D
  EXPECT_THROW(batched_matmul(a, b.to(DType::F64)), Error);
  Tensor square = Tensor::zeros(Shape{2, 4, 4});
  EXPECT_THROW(batched_matmul_(square, square, false, square, false), Error);  // out overlaps an operand
  Tensor wrong = Tensor::zeros(Shape{2, 3, 4});
  EXPECT_THROW(batched_matmul_(wrong, a, false, b, false), Error);
}

TEST(TransformerOps, AttentionMaskKeepsExactlyTheCausalWindow) {
  Rng rng(4);
  const double kMasked = -7.0;  // a visible stand-in for -inf
  struct Case {
    int64_t tq, tk, window;
  };
  for (DType d : kDTypes) {
    for (const Case& c : {Case{6, 6, 0}, Case{6, 6, 1}, Case{6, 6, 2}, Case{6, 6, 6}, Case{6, 6, 9}, Case{3, 8, 0},
                          Case{3, 8, 4}, Case{1, 5, 2}, Case{300, 300, 256}}) {
      const int64_t batch = 2;
      Tensor scores = random_cpu(Shape{batch, c.tq, c.tk}, d, rng, 1.0, 2.0, false);
      Tensor out = attention_mask(scores, c.window, kMasked);
      std::vector<double> s = scores.to_vector(), o = out.to_vector();
      int64_t kept = 0;
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t r = 0; r < c.tq; ++r)
          for (int64_t j = 0; j < c.tk; ++j) {
            const int64_t i = (b * c.tq + r) * c.tk + j;
            const bool visible = key_visible(r, j, c.tq, c.tk, c.window);
            kept += visible;
            ASSERT_EQ(o[i], visible ? s[i] : kMasked) << "tq " << c.tq << " tk " << c.tk << " window " << c.window
                                                      << " row " << r << " key " << j;
          }
      // Count the visible keys independently: each query sees min(position + 1, window) keys.
      int64_t expected = 0;
      for (int64_t r = 0; r < c.tq; ++r) {
        const int64_t position = c.tk - c.tq + r;
        expected += c.window == 0 ? position + 1 : std::min(position + 1, c.window);
      }
      EXPECT_EQ(kept, batch * expected);
      Tensor in_place = scores.clone();
      attention_mask_(in_place, in_place, c.window, kMasked);
      expect_close(in_place, out, sae::testing::kExact, "mask in place");
    }
  }
  EXPECT_THROW(attention_mask(Tensor::zeros(Shape{1, 5, 4}), 0), Error);  // more queries than keys
  EXPECT_THROW(attention_mask(Tensor::zeros(Shape{5, 4}), 0), Error);
  EXPECT_THROW(attention_mask(Tensor::zeros(Shape{1, 4, 4}), -1), Error);
}

// Hugging Face masks out-of-window keys with finfo(float32).min and adds finfo.min for future keys
// (docs/gpt_neo.md section 4). Our -inf mask must give bit for bit the probabilities of that.
TEST(TransformerOps, MaskThenSoftmaxEqualsHuggingFaceFinfoMinMasking) {
  Rng rng(5);
  const int64_t t = 40, window = 8;
  Tensor scores = random_cpu(Shape{3, t, t}, DType::F32, rng, -6.0, 6.0, false);
  Tensor ours = softmax(attention_mask(scores, window));
  const double lowest = std::numeric_limits<float>::lowest();
  std::vector<double> hf = scores.to_vector();
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t i = 0; i < t; ++i)
      for (int64_t j = 0; j < t; ++j) {
        double& v = hf[(b * t + i) * t + j];
        const bool in_window = j <= i && i - j < window;
        if (!in_window) v = lowest;        // torch.where(bias, scores, finfo.min)
        if (j > i) v = -INFINITY;          // + causal mask finfo.min: overflows to -inf in float32
      }
  Tensor hf_probs = softmax(Tensor::from_vector(hf, Shape{3, t, t}, DType::F32));
  sae::testing::expect_bitwise_equal(ours, hf_probs, "-inf mask vs finfo.min mask");
  std::vector<double> p = ours.to_vector();
  for (int64_t i = 0; i < t; ++i) {
    double row = 0;
    for (int64_t j = 0; j < t; ++j) {
      row += p[i * t + j];
      if (j > i || i - j >= window) EXPECT_EQ(p[i * t + j], 0.0) << i << " " << j;
      else EXPECT_GT(p[i * t + j], 0.0) << i << " " << j;
    }
    EXPECT_NEAR(row, 1.0, 1e-6);
  }
}

TEST(TransformerOps, SwapAxes01MovesBlocks) {
  for (DType d : kDTypes) {
    std::vector<double> v(2 * 3 * 4);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i);
    Tensor x = Tensor::from_vector(v, Shape{2, 3, 4}, d);
    Tensor y = swap_axes01(x);
    EXPECT_EQ(y.shape(), (Shape{3, 2, 4}));
    std::vector<double> got = y.to_vector();
    for (int64_t a = 0; a < 2; ++a)
      for (int64_t b = 0; b < 3; ++b)
        for (int64_t c = 0; c < 4; ++c) EXPECT_EQ(got[(b * 2 + a) * 4 + c], v[(a * 3 + b) * 4 + c]);
    expect_close(swap_axes01(y), x, sae::testing::kExact, "swap twice");
    EXPECT_THROW(swap_axes01_(x, x), Error);
    EXPECT_THROW(swap_axes01(x.reshape(Shape{6, 4})), Error);
  }
  Rng rng(6);
  Tensor big = random_cpu(Shape{218, 48, 16}, DType::F32, rng);  // the threaded path
  expect_close(swap_axes01(swap_axes01(big)), big, sae::testing::kExact, "big swap twice");
}

// The exact GELU of torch.nn.functional.gelu (GPT-NeoX's "gelu"): literals from Python's math.erf,
// a sweep against the erf form in double and a central difference of it, and the tails.
TEST(TransformerOps, GeluExactMatchesTheErfFormAndItsDerivative) {
  const std::vector<double> z = {-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0};
  const std::vector<double> want = {-0.00404969409489031, -0.15865525393145707, -0.15426876936299344, 0.0,
                                    0.34573123063700656,  0.8413447460685429,   2.99595030590511};
  for (DType d : kDTypes)
    expect_close(gelu(Tensor::from_vector(z, Shape{7}, d)), Tensor::from_vector(want, Shape{7}, d),
                 d == DType::F32 ? Tolerance{1e-7, 3e-7} : Tolerance{1e-16, 1e-15}, "gelu literals");
  const auto erf_form = [](double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); };
  std::vector<double> xs, values, slopes;
  for (double x = -12.0; x <= 12.0; x += 0.01) {
    xs.push_back(x);
    values.push_back(erf_form(x));
    const double h = 1e-6;
    slopes.push_back((erf_form(x + h) - erf_form(x - h)) / (2 * h));
  }
  const Shape s{static_cast<int64_t>(xs.size())};
  const Tensor x = Tensor::from_vector(xs, s, DType::F64);
  expect_close(gelu(x), Tensor::from_vector(values, s, DType::F64), Tolerance{1e-15, 1e-13}, "gelu sweep");
  expect_close(gelu_grad(x), Tensor::from_vector(slopes, s, DType::F64), Tolerance{1e-8, 1e-8}, "gelu_grad");
  expect_close(gelu(x.to(DType::F32)), Tensor::from_vector(values, s, DType::F32), Tolerance{1e-7, 1e-6},
               "gelu sweep f32");
  // gelu and gelu_new are different functions: they differ by up to ~5e-4 (near |z| = 2).
  EXPECT_GT(sae::testing::max_abs_diff(gelu(x), gelu_new(x)), 1e-4);
  const std::vector<double> tails = {-1e30, -100.0, 100.0, 1e30};
  for (DType d : kDTypes) {
    Tensor t = Tensor::from_vector(tails, Shape{4}, d);
    expect_close(gelu(t), Tensor::from_vector({0, 0, 100, 1e30}, Shape{4}, d), Tolerance{1e-30, 1e-7}, "gelu tails");
    expect_close(gelu_grad(t), Tensor::from_vector({0, 0, 1, 1}, Shape{4}, d), Tolerance{1e-30, 0},
                 "gelu_grad tails");
  }
}

// Rotary embedding against a float64 loop written from Hugging Face's apply_rotary_pos_emb
// (q * cos + rotate_half(q) * sin on the first 2R columns, cos/sin repeated over both halves), in
// place and not, with every row of the tables distinct; then the front-end's refusals.
TEST(TransformerOps, RotaryMatchesRotateHalfAndCopiesTheRest) {
  Rng rng(11);
  for (DType d : kDTypes) {
    for (auto [b, t, width, r] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{3, 5, 8, 2}, {2, 4, 6, 3}, {1, 1, 2, 1},
                                  {16, 37, 64, 8}}) {
      const Tensor x = random_cpu(Shape{b, t, width}, d, rng);
      std::vector<double> angles(t * r), cos_v(t * r), sin_v(t * r);
      for (int64_t p = 0; p < t; ++p)
        for (int64_t j = 0; j < r; ++j) {
          const double angle = (p + 3) * std::pow(10000.0, -2.0 * j / (2.0 * r));
          cos_v[p * r + j] = std::cos(angle);
          sin_v[p * r + j] = std::sin(angle);
        }
      const Tensor cos_t = Tensor::from_vector(cos_v, Shape{t, r}, d), sin_t = Tensor::from_vector(sin_v, Shape{t, r}, d);
      const std::vector<double> in = x.to_vector();
      std::vector<double> want(in.size());
      for (int64_t row = 0; row < b * t; ++row) {
        const int64_t p = row % t;
        for (int64_t j = 0; j < width; ++j) {
          const double* v = in.data() + row * width;
          double y = v[j];
          if (j < 2 * r) {
            const int64_t k = j % r;
            const double rotated_half = j < r ? -v[j + r] : v[j - r];  // rotate_half: cat(-x2, x1)
            y = v[j] * cos_v[p * r + k] + rotated_half * sin_v[p * r + k];
          }
          want[row * width + j] = y;
        }
      }
      const Tensor expected = Tensor::from_vector(want, x.shape(), d);
      expect_close(rotary(x, cos_t, sin_t), expected, tol_for(d), cat("rotary ", x.shape().str(), " R ", r));
      Tensor in_place = x.clone();
      rotary_(in_place, in_place, cos_t, sin_t);
      expect_close(in_place, expected, tol_for(d), "rotary in place");
      // The inverse rotation gives x back.
      expect_close(rotary(rotary(x, cos_t, sin_t), cos_t, neg(sin_t)), x, tol_for(d), "rotary undone");
    }
  }
  const Tensor x = Tensor::zeros(Shape{2, 3, 4}), c = Tensor::zeros(Shape{3, 2});
  EXPECT_THROW(rotary(x, Tensor::zeros(Shape{3, 3}), Tensor::zeros(Shape{3, 3})), Error);  // 2R > D
  EXPECT_THROW(rotary(x, Tensor::zeros(Shape{2, 2}), Tensor::zeros(Shape{2, 2})), Error);  // T mismatch
  EXPECT_THROW(rotary(x, c, Tensor::zeros(Shape{3, 1})), Error);
  EXPECT_THROW(rotary(x, c, Tensor::zeros(Shape{3, 2}, DType::F64)), Error);
  EXPECT_THROW(rotary(x.reshape(Shape{6, 4}), c, c), Error);
}
