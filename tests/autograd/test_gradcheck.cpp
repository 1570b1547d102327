// Float64 gradcheck (central differences vs backward) for every differentiable op, including the
// broadcast forms, and for a Linear -> ReLU -> Linear -> loss composition.
#include <gtest/gtest.h>

#include "tests/util/gradcheck.h"
#include "nn/module.h"

using namespace sae;
using sae::testing::gradcheck;
using sae::testing::random_off_kink;

namespace {
constexpr double kTol = 1e-7;
using Vars = std::vector<Variable>;

Tensor positive(const Shape& s, Rng& rng) { return random_off_kink(s, rng, 0.5, 2.0, 0.0); }
}  // namespace

TEST(Gradcheck, BinaryOpsSameShapeAndBroadcast) {
  Rng rng(1);
  Tensor a = random_off_kink(Shape{3, 4}, rng), b = random_off_kink(Shape{3, 4}, rng);
  Tensor row = random_off_kink(Shape{4}, rng), col = random_off_kink(Shape{3, 1}, rng);
  Tensor s = random_off_kink(Shape{1}, rng), pos = positive(Shape{3, 4}, rng), pos_row = positive(Shape{4}, rng);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] + v[1]; }, {a, b}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] - v[1]; }, {a, row}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] * v[1]; }, {a, col}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] * v[1]; }, {s, a}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] / v[1]; }, {a, pos}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] / v[1]; }, {a, pos_row}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return v[0] - v[1]; }, {col, row}), kTol);  // outer broadcast
}

TEST(Gradcheck, UnaryOps) {
  Rng rng(2);
  Tensor x = random_off_kink(Shape{2, 5}, rng), p = positive(Shape{2, 5}, rng);
  EXPECT_LT(gradcheck([](const Vars& v) { return -v[0]; }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::square(v[0]); }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::sqrt(v[0]); }, {p}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::abs(v[0]); }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::relu(v[0]); }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::exp(v[0]); }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::log(v[0]); }, {p}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::affine(v[0], -1.5, 0.25); }, {x}), kTol);
}

TEST(Gradcheck, WhereRoutesGradients) {
  Rng rng(3);
  Tensor a = random_off_kink(Shape{3, 3}, rng), b = random_off_kink(Shape{3, 3}, rng);
  Tensor cond = gt(a, b);
  EXPECT_GT(sum(cond).item(), 0.0);
  EXPECT_LT(sum(cond).item(), 9.0);
  EXPECT_LT(gradcheck([cond](const Vars& v) { return ag::where(cond, v[0], v[1]); }, {a, b}), kTol);
}

TEST(Gradcheck, Reductions) {
  Rng rng(4);
  Tensor x = random_off_kink(Shape{3, 4, 2}, rng);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::sum(v[0]); }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::mean(v[0]); }, {x}), kTol);
  for (int axis = 0; axis < 3; ++axis) {
    EXPECT_LT(gradcheck([axis](const Vars& v) { return ag::sum(v[0], axis); }, {x}), kTol) << axis;
    EXPECT_LT(gradcheck([axis](const Vars& v) { return ag::sum(v[0], axis, true); }, {x}), kTol) << axis;
    EXPECT_LT(gradcheck([axis](const Vars& v) { return ag::mean(v[0], axis); }, {x}), kTol) << axis;
    EXPECT_LT(gradcheck([axis](const Vars& v) { return ag::norm2(v[0], axis); }, {x}), kTol) << axis;
  }
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::norm2(v[0], -1, true); }, {x}), kTol);
}

TEST(Gradcheck, MatmulEveryTransposeCase) {
  Rng rng(5);
  Tensor a = random_off_kink(Shape{3, 4}, rng), b = random_off_kink(Shape{4, 5}, rng);
  Tensor at = transpose(a), bt = transpose(b);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::matmul(v[0], v[1]); }, {a, b}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::matmul(v[0], v[1], true, false); }, {at, b}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::matmul(v[0], v[1], false, true); }, {a, bt}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::matmul(v[0], v[1], true, true); }, {at, bt}), kTol);
}

TEST(Gradcheck, LayoutOps) {
  Rng rng(6);
  Tensor x = random_off_kink(Shape{3, 4}, rng);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::transpose(v[0]); }, {x}), kTol);
  EXPECT_LT(gradcheck([](const Vars& v) { return ag::reshape(v[0], Shape{2, 6}); }, {x}), kTol);
}

TEST(Gradcheck, LinearReluLinearLoss) {
  // Linear -> ReLU -> Linear -> sum of squared error, every parameter and the input.
  Rng rng(7);
  const int n = 5, d_in = 4, hidden = 6, d_out = 3;
  Tensor x = random_off_kink(Shape{n, d_in}, rng);
  Tensor w1 = random_off_kink(Shape{hidden, d_in}, rng), b1 = random_off_kink(Shape{hidden}, rng);
  Tensor w2 = random_off_kink(Shape{d_out, hidden}, rng), b2 = random_off_kink(Shape{d_out}, rng);
  Tensor target = random_off_kink(Shape{n, d_out}, rng);
  // Keep every hidden pre-activation away from the ReLU kink so finite differences are valid.
  Tensor pre = add(matmul(x, w1, false, true), b1);
  std::vector<double> pv = pre.to_vector();
  for (double p : pv) ASSERT_GT(std::abs(p), 1e-3) << "pre-activation near the ReLU kink; change the seed";
  auto mlp = [target](const Vars& v) {
    Variable h = nn::relu(ag::matmul(v[0], v[1], false, true) + v[2]);
    Variable y = ag::matmul(h, v[3], false, true) + v[4];
    return nn::sum_squared_error(y, Variable(target));
  };
  EXPECT_LT(gradcheck(mlp, {x, w1, b1, w2, b2}), kTol);
  auto mlp_mse = [target](const Vars& v) {
    Variable h = nn::relu(ag::matmul(v[0], v[1], false, true) + v[2]);
    return nn::mean_squared_error(ag::matmul(h, v[3], false, true) + v[4], Variable(target));
  };
  EXPECT_LT(gradcheck(mlp_mse, {x, w1, b1, w2, b2}), kTol);
}

TEST(Gradcheck, DetectsAWrongGradient) {
  // The checker itself must fail on a wrong formula: a "square" whose backward forgets the 2.
  Rng rng(8);
  Tensor x = random_off_kink(Shape{4}, rng);
  auto wrong_square = [](const Vars& v) {
    Tensor tx = v[0].data();
    return make_result(square(tx), "wrong_square", {v[0]},
                       [tx](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g * tx}; });
  };
  EXPECT_GT(gradcheck(wrong_square, {x}), 1e-2);
  // A NaN gradient (a 0/0 in a backward formula), everywhere or in one place, is a failure: the
  // checker's max had dropped NaN and reported 0.
  auto nan_square = [](const Vars& v, bool everywhere) {
    Tensor tx = v[0].data();
    return make_result(square(tx), "nan_square", {v[0]}, [tx, everywhere](const Tensor& g, const std::vector<bool>&) {
      std::vector<double> grad = (g * tx).to_vector();
      for (size_t i = 0; i < grad.size(); ++i) grad[i] = everywhere || i == 2 ? std::nan("") : 2 * grad[i];
      return std::vector<Tensor>{Tensor::from_vector(grad, tx.shape(), tx.dtype())};
    });
  };
  EXPECT_EQ(gradcheck([&](const Vars& v) { return nan_square(v, true); }, {x}), INFINITY);
  EXPECT_EQ(gradcheck([&](const Vars& v) { return nan_square(v, false); }, {x}), INFINITY);
}
