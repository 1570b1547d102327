// Autograd engine: gradient accumulation, shared inputs, the no-grad scope, leaves vs non-leaves,
// deep graphs (no stack overflow in backward or destruction) and module bookkeeping.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/functions.h"
#include "nn/adam.h"
#include "nn/module.h"
#include "tensor/ops.h"
#include "tests/util/compare.h"

using namespace sae;
using sae::testing::worst_error;

TEST(Autograd, SharedInputAccumulatesAlongBothPaths) {
  // y = x*x + 3x  ->  dy/dx = 2x + 3
  Variable x(Tensor::from_vector({1.0, -2.0}, Shape{2}, DType::F64), true);
  Variable y = ag::sum(x * x + x * 3.0);
  y.backward();
  std::vector<double> g = x.grad().to_vector();
  EXPECT_DOUBLE_EQ(g[0], 5.0);
  EXPECT_DOUBLE_EQ(g[1], -1.0);
  // A second backward accumulates (+=) until zero_grad.
  Variable y2 = ag::sum(x * x + x * 3.0);
  y2.backward();
  EXPECT_DOUBLE_EQ(x.grad().to_vector()[0], 10.0);
  x.zero_grad();
  EXPECT_DOUBLE_EQ(x.grad().to_vector()[0], 0.0);
}

TEST(Autograd, NoGradScopeRecordsNothing) {
  Variable x(Tensor::from_vector({1.0}, Shape{1}, DType::F64), true);
  {
    NoGradGuard guard;
    Variable y = x * x;
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
  }
  Variable z = x * x;
  EXPECT_TRUE(z.requires_grad());
  EXPECT_NE(z.grad_fn(), nullptr);
}

TEST(Autograd, OnlyInputsThatNeedGradGetOne) {
  Variable a(Tensor::from_vector({2.0}, Shape{1}, DType::F64), true);
  Variable b(Tensor::from_vector({3.0}, Shape{1}, DType::F64), false);
  Variable y = a * b;
  y.backward();
  EXPECT_DOUBLE_EQ(a.grad().item(), 3.0);
  EXPECT_FALSE(b.grad().defined());
  EXPECT_THROW(b.backward(), Error);  // b does not require grad
  Variable v(Tensor::zeros(Shape{2}, DType::F64), true);
  EXPECT_THROW((v * 2.0).backward(), Error);  // non-scalar without an explicit gradient
}

TEST(Autograd, DeepChainDoesNotOverflowTheStack) {
  // 200k chained ops: a recursive backward or destructor would overflow the stack.
  Variable x(Tensor::from_vector({1.0}, Shape{1}, DType::F64), true);
  Variable y = x;
  const int depth = 200000;
  for (int i = 0; i < depth; ++i) y = ag::affine(y, 1.0, 1e-6);
  y.backward();
  EXPECT_DOUBLE_EQ(x.grad().item(), 1.0);
  EXPECT_NEAR(y.data().item(), 1.0 + depth * 1e-6, 1e-9);
  y = Variable();  // destroys the chain
  SUCCEED();
}

TEST(Autograd, DeterministicAcrossRuns) {
  // A graph with many shared subexpressions yields bit-identical gradients on repeat.
  auto run = [] {
    Rng rng(11);
    Variable x(uniform_tensor(Shape{16, 8}, -1, 1, rng), true);
    Variable w(uniform_tensor(Shape{8, 8}, -1, 1, rng), true);
    Variable h = ag::relu(ag::matmul(x, w));
    Variable loss = ag::sum(h * h) + ag::sum(ag::matmul(h, w, false, true) * x);
    loss.backward();
    return w.grad().to_vector();
  };
  EXPECT_EQ(run(), run());
}

TEST(Modules, NamedParametersAndZeroGrad) {
  struct Mlp : nn::Module {
    nn::Linear first, second;
    Mlp(Rng& rng) : first(3, 4, rng), second(4, 2, rng) {
      register_module("first", &first);
      register_module("second", &second);
    }
  };
  Rng rng(1);
  Mlp mlp(rng);
  auto named = mlp.named_parameters();
  ASSERT_EQ(named.size(), 4u);
  EXPECT_EQ(named[0].first, "first.weight");
  EXPECT_EQ(named[3].first, "second.bias");
  EXPECT_EQ(named[0].second.shape(), (Shape{4, 3}));
  // PyTorch default init bound 1/sqrt(fan_in)
  double bound = 1.0 / std::sqrt(3.0);
  EXPECT_LE(reduce(ReduceOp::max, abs(mlp.first.weight.data())).item(), bound);
  EXPECT_GT(reduce(ReduceOp::max, abs(mlp.first.weight.data())).item(), 0.5 * bound);
  Variable x(Tensor::full(Shape{2, 3}, 0.5), false);
  ag::sum(mlp.second.forward(nn::relu(mlp.first.forward(x)))).backward();
  EXPECT_TRUE(named[0].second.grad().defined());
  mlp.zero_grad();
  EXPECT_DOUBLE_EQ(sum(abs(named[0].second.grad())).item(), 0.0);
}

TEST(Adam, MatchesTheTorchFormulaByHand) {
  // One parameter, three steps, checked against the torch.optim.Adam recurrence in double.
  Variable p(Tensor::from_vector({0.5, -1.0}, Shape{2}, DType::F64), true);
  nn::AdamOptions opt;
  opt.lr = 0.1;
  opt.weight_decay = 0.01;
  nn::Adam adam({p}, opt);
  double ref[2] = {0.5, -1.0}, m[2] = {0, 0}, v[2] = {0, 0};
  const double grads[3][2] = {{0.3, -0.2}, {-0.1, 0.4}, {0.25, 0.05}};
  for (int t = 1; t <= 3; ++t) {
    p.grad() = Tensor::from_vector({grads[t - 1][0], grads[t - 1][1]}, Shape{2}, DType::F64);
    adam.step();
    for (int i = 0; i < 2; ++i) {
      double g = grads[t - 1][i] + 0.01 * ref[i];
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      double mhat_step = 0.1 / (1 - std::pow(0.9, t));
      ref[i] -= mhat_step * m[i] / (std::sqrt(v[i]) / std::sqrt(1 - std::pow(0.999, t)) + 1e-8);
    }
  }
  std::vector<double> got = p.data().to_vector();
  EXPECT_NEAR(got[0], ref[0], 1e-14);
  EXPECT_NEAR(got[1], ref[1], 1e-14);
  EXPECT_EQ(adam.steps_taken(), 3);
  EXPECT_THROW(nn::Adam({p}, nn::AdamOptions{-1.0}), UsageError);
}

TEST(Adam, Float32KernelMatchesFloat64OnALargeTensor) {
  // The vectorised, multi-threaded pass (float32 and float64) on 100k elements against the
  // torch.optim.Adam recurrence written out here in double, from the same starting values (moments
  // not zero, weight decay on), three steps with a new gradient each.
  const int64_t n = 100000;
  const double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.01;
  for (DType dtype : {DType::F32, DType::F64}) {
    SCOPED_TRACE(dtype_name(dtype));
    Rng rng(5);
    Tensor p = uniform_tensor(Shape{n}, -1, 1, rng, dtype), m = uniform_tensor(Shape{n}, -0.1, 0.1, rng, dtype);
    Tensor v = uniform_tensor(Shape{n}, 0, 0.01, rng, dtype);
    const std::vector<double> start = p.to_vector();
    std::vector<double> ref_p = start, ref_m = m.to_vector(), ref_v = v.to_vector();
    AdamScalars s;
    s.lr = lr;
    s.beta1 = beta1;
    s.beta2 = beta2;
    s.eps = eps;
    s.weight_decay = wd;
    for (int64_t t = 1; t <= 3; ++t) {
      const Tensor g = uniform_tensor(Shape{n}, -1, 1, rng, dtype);
      s.step = t;
      adam_step_(p, m, v, g, s);
      const std::vector<double> gv = g.to_vector();
      for (int64_t i = 0; i < n; ++i) {
        const double grad = gv[i] + wd * ref_p[i];
        ref_m[i] = beta1 * ref_m[i] + (1 - beta1) * grad;
        ref_v[i] = beta2 * ref_v[i] + (1 - beta2) * grad * grad;
        const double m_hat = ref_m[i] / (1 - std::pow(beta1, double(t)));
        const double v_hat = ref_v[i] / (1 - std::pow(beta2, double(t)));
        ref_p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
      }
    }
    // float32: a few roundings of values below 1 per step, and the step itself below 3 lr.
    const double tol = dtype == DType::F32 ? 1e-6 : 1e-14;
    double worst_p = 0, worst_m = 0, worst_v = 0, moved = 0;
    const std::vector<double> got_p = p.to_vector(), got_m = m.to_vector(), got_v = v.to_vector();
    for (int64_t i = 0; i < n; ++i) {
      worst_p = worst_error(worst_p, std::abs(got_p[i] - ref_p[i]));  // a NaN output: +inf
      worst_m = worst_error(worst_m, std::abs(got_m[i] - ref_m[i]));
      worst_v = worst_error(worst_v, std::abs(got_v[i] - ref_v[i]) / std::max(ref_v[i], 1e-30));
      moved = std::max(moved, std::abs(ref_p[i] - start[i]));
    }
    EXPECT_LE(worst_p, tol) << "parameters";
    EXPECT_LE(worst_m, tol) << "first moments";
    EXPECT_LE(worst_v, dtype == DType::F32 ? 1e-5 : 1e-13) << "second moments (relative)";
    EXPECT_GT(moved, lr) << "the parameters moved";  // about lr per step: the comparison sees the update
  }
}
