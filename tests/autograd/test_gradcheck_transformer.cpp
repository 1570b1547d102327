// Float64 gradcheck (central differences vs backward) of the transformer ops' autograd functions
// (autograd/functions.h): embedding with repeated ids, LayerNorm (x, weight and bias), gelu_new, gelu,
// rotary,
// softmax, batched matmul in every transpose case, the attention mask followed by softmax (global,
// local, fewer queries than keys), the axis swap, and one whole attention head composed of them;
// RMSNorm (x and weight), the gated activations (SwiGLU, GeGLU), soft-capping, and a grouped-query
// soft-capped attention head composed of them.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/util/gradcheck.h"

using namespace sae;
using sae::testing::gradcheck;
using sae::testing::random_off_kink;

namespace {
constexpr double kTol = 1e-7;
using Vars = std::vector<Variable>;
}  // namespace

TEST(GradcheckTransformer, EmbeddingScatterAddsRepeatedIds) {
  Rng rng(1);
  Tensor table = random_off_kink(Shape{6, 4}, rng);
  Tensor ids = Tensor::from_vector({5, 0, 5, 2, 5, 1}, Shape{6}, DType::I32);
  EXPECT_LT(gradcheck([ids](const Vars& v) { return ag::embedding(v[0], ids); }, {table}), kTol);
  // Squaring the rows makes each id's gradient depend on its row: a wrong row would show.
  EXPECT_LT(gradcheck([ids](const Vars& v) { return ag::square(ag::embedding(v[0], ids)); }, {table}), kTol);
}

TEST(GradcheckTransformer, LayerNormAllThreeInputs) {
  Rng rng(2);
  for (const Shape& shape : {Shape{3, 5}, Shape{2, 3, 4}}) {
    const int64_t d = shape[shape.ndim - 1];
    Tensor x = random_off_kink(shape, rng, -2.0, 3.0), w = random_off_kink(Shape{d}, rng);
    Tensor b = random_off_kink(Shape{d}, rng);
    // Downstream nonlinearity so the gradient of every input is not a constant.
    auto f = [](const Vars& v) { return ag::square(ag::layer_norm(v[0], v[1], v[2], 1e-5)); };
    EXPECT_LT(gradcheck(f, {x, w, b}), kTol) << shape.str();
  }
}

TEST(GradcheckTransformer, GeluNew) {
  Rng rng(3);
  Tensor x = random_off_kink(Shape{4, 6}, rng, -4.0, 4.0);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::gelu_new(v[0]); }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::gelu_new(ag::gelu_new(v[0])); }, {x}), kTol);
}

TEST(GradcheckTransformer, GeluExact) {
  Rng rng(13);
  Tensor x = random_off_kink(Shape{4, 6}, rng, -4.0, 4.0);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::gelu(v[0]); }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::gelu(ag::gelu(v[0])); }, {x}), kTol);
}

// The rotation's gradient is the opposite rotation; squaring afterwards makes it depend on x.
TEST(GradcheckTransformer, Rotary) {
  Rng rng(14);
  const int64_t t = 4, r = 3;
  Tensor x = random_off_kink(Shape{2, t, 8}, rng);
  std::vector<double> c(t * r), s(t * r);
  for (int64_t i = 0; i < t * r; ++i) {
    c[i] = std::cos(0.7 * double(i) + 0.1);
    s[i] = std::sin(0.7 * double(i) + 0.1);
  }
  const Tensor cos = Tensor::from_vector(c, Shape{t, r}, DType::F64), sin = Tensor::from_vector(s, Shape{t, r}, DType::F64);
  EXPECT_LT(gradcheck([&](const Vars& v) { return ag::square(ag::rotary(v[0], cos, sin)); }, {x}), kTol);
}

TEST(GradcheckTransformer, Softmax) {
  Rng rng(4);
  Tensor x = random_off_kink(Shape{2, 3, 5}, rng, -3.0, 3.0);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::softmax(v[0]); }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::log(ag::softmax(v[0])); }, {x}), kTol);
}

TEST(GradcheckTransformer, BatchedMatmulEveryTransposeCase) {
  Rng rng(5);
  const int64_t batch = 3, m = 4, k = 2, n = 5;
  for (int flags = 0; flags < 4; ++flags) {
    const bool ta = flags & 1, tb = flags & 2;
    Tensor a = random_off_kink(ta ? Shape{batch, k, m} : Shape{batch, m, k}, rng);
    Tensor b = random_off_kink(tb ? Shape{batch, n, k} : Shape{batch, k, n}, rng);
    EXPECT_LT(gradcheck([ta, tb](const Vars& v) { return ag::batched_matmul(v[0], v[1], ta, tb); }, {a, b}), kTol)
        << "trans_a " << ta << " trans_b " << tb;
  }
}

TEST(GradcheckTransformer, MaskedSoftmaxGlobalLocalAndFewerQueries) {
  Rng rng(6);
  struct Case {
    int64_t tq, tk, window;
  };
  for (const Case& c : {Case{5, 5, 0}, Case{5, 5, 2}, Case{3, 6, 0}, Case{3, 6, 3}}) {
    Tensor scores = random_off_kink(Shape{2, c.tq, c.tk}, rng);
    const int64_t window = c.window;
    EXPECT_LT(gradcheck([window](const Vars& v) { return ag::softmax(ag::attention_mask(v[0], window)); }, {scores}),
              kTol)
        << c.tq << " " << c.tk << " " << c.window;
  }
  // The masked scores get exactly zero gradient.
  Tensor scores = random_off_kink(Shape{1, 4, 4}, rng);
  Variable s(scores.clone(), true);
  ag::sum(ag::square(ag::softmax(ag::attention_mask(s, 2)))).backward();
  std::vector<double> g = s.grad().to_vector();
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 4; ++j) {
      if (j > i || i - j >= 2) {
        EXPECT_EQ(g[i * 4 + j], 0.0) << i << " " << j;
      } else if (i > 0) {
        EXPECT_NE(g[i * 4 + j], 0.0) << i << " " << j;  // row 0 has one key: constant
      }
    }
}

TEST(GradcheckTransformer, SwapAxes01) {
  Rng rng(7);
  Tensor x = random_off_kink(Shape{3, 2, 4}, rng);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::square(ag::swap_axes01(v[0])); }, {x}), kTol);
}

// One local attention layer written with the ops: heads split by swap_axes01, scores, mask,
// softmax, values, heads merged; gradients for q, k and v together.
TEST(GradcheckTransformer, AttentionHeadComposition) {
  Rng rng(8);
  const int64_t t = 5, heads = 2, hd = 3;
  Tensor q = random_off_kink(Shape{t, heads, hd}, rng), k = random_off_kink(Shape{t, heads, hd}, rng);
  Tensor v = random_off_kink(Shape{t, heads, hd}, rng);
  auto attention = [](const Vars& x) {
    Variable qh = ag::swap_axes01(x[0]), kh = ag::swap_axes01(x[1]), vh = ag::swap_axes01(x[2]);
    Variable p = ag::softmax(ag::attention_mask(ag::batched_matmul(qh, kh, false, true), 3));
    return ag::swap_axes01(ag::batched_matmul(p, vh));
  };
  EXPECT_LT(gradcheck(attention, {q, k, v}), kTol);
}

TEST(GradcheckTransformer, RmsNormBothInputs) {
  Rng rng(15);
  for (const Shape& shape : {Shape{3, 5}, Shape{2, 3, 4}, Shape{1, 1}}) {
    const int64_t d = shape[shape.ndim - 1];
    Tensor x = random_off_kink(shape, rng, -2.0, 3.0), w = random_off_kink(Shape{d}, rng);
    auto f = [](const Vars& v) { return ag::square(ag::rms_norm(v[0], v[1], 1e-5)); };
    EXPECT_LT(gradcheck(f, {x, w}), kTol) << shape.str();
  }
}

TEST(GradcheckTransformer, GatedActivations) {
  Rng rng(16);
  for (GluActivation act : {GluActivation::silu, GluActivation::gelu_tanh}) {
    Tensor x = random_off_kink(Shape{4, 6}, rng, -4.0, 4.0);
    EXPECT_LT(gradcheck([act](const Vars& v) { return ag::square(ag::glu(v[0], act)); }, {x}), kTol)
        << glu_activation_name(act);
  }
}

TEST(GradcheckTransformer, SoftCap) {
  Rng rng(17);
  Tensor x = random_off_kink(Shape{3, 7}, rng, -20.0, 20.0);
  for (double cap : {50.0, 3.0})
    EXPECT_LT(gradcheck([cap](const Vars& v) { return ag::square(ag::soft_cap(v[0], cap)); }, {x}), kTol) << cap;
}

// Four query heads over two key/value heads (grouped-query attention as the decoder runs it: the
// queries of a group stacked into one batch entry), soft-capped scores, a local window.
TEST(GradcheckTransformer, GroupedQuerySoftCappedAttentionComposition) {
  Rng rng(18);
  const int64_t t = 5, heads = 4, kv_heads = 2, hd = 3, group = heads / kv_heads;
  Tensor q = random_off_kink(Shape{heads, t, hd}, rng), k = random_off_kink(Shape{kv_heads, t, hd}, rng);
  Tensor v = random_off_kink(Shape{kv_heads, t, hd}, rng);
  auto attention = [&](const Vars& x) {
    Variable qg = ag::reshape(x[0], Shape{kv_heads, group * t, hd});
    Variable scores = ag::soft_cap(ag::batched_matmul(qg, x[1], false, true), 2.0);
    Variable masked = ag::attention_mask(ag::reshape(scores, Shape{heads, t, t}), 3);
    Variable p = ag::reshape(ag::softmax(masked), Shape{kv_heads, group * t, t});
    return ag::batched_matmul(p, x[2]);
  };
  EXPECT_LT(gradcheck(attention, {q, k, v}), kTol);
}
