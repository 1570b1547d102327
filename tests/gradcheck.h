// Float64 gradient check: compares backward() with central finite differences. Non-scalar outputs
// are reduced as sum(output * R) with a fixed random R, so every output element gets its own
// upstream gradient. Returns the worst mismatch |analytic - numeric| / (1 + |numeric|).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "tensor/ops.h"
#include "tensor/rng.h"

namespace sae::testing {

using Function = std::function<Variable(const std::vector<Variable>&)>;

inline double gradcheck(const Function& f, const std::vector<Tensor>& inputs, double eps = 1e-6,
                        uint64_t seed = 1234) {
  // Analytic gradients.
  std::vector<Variable> vars;
  for (const Tensor& t : inputs) vars.emplace_back(t.clone(), true);
  Variable out = f(vars);
  Rng rng(seed);
  Tensor weights = uniform_tensor(out.shape(), 0.5, 1.5, rng, DType::F64, out.data().device());
  Variable loss = ag::sum(out * Variable(weights));
  loss.backward();

  auto scalar_loss = [&](const std::vector<Tensor>& xs) {
    NoGradGuard no_grad;
    std::vector<Variable> vs;
    for (const Tensor& t : xs) vs.emplace_back(t, false);
    return sum(mul(f(vs).data(), weights)).item();
  };

  double worst = 0.0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    std::vector<Tensor> xs;
    for (const Tensor& t : inputs) xs.push_back(t.clone().to(Device::CPU));
    std::vector<double> base = xs[k].to_vector();
    std::vector<double> analytic = vars[k].grad().defined() ? vars[k].grad().to_vector()
                                                            : std::vector<double>(base.size(), 0.0);
    for (size_t i = 0; i < base.size(); ++i) {
      std::vector<double> plus = base, minus = base;
      plus[i] += eps;
      minus[i] -= eps;
      std::vector<Tensor> xp = xs, xm = xs;
      xp[k] = Tensor::from_vector(plus, xs[k].shape(), DType::F64, inputs[k].device());
      xm[k] = Tensor::from_vector(minus, xs[k].shape(), DType::F64, inputs[k].device());
      for (size_t j = 0; j < xs.size(); ++j)
        if (j != k) xp[j] = xm[j] = inputs[j];
      const double numeric = (scalar_loss(xp) - scalar_loss(xm)) / (2 * eps);
      worst = std::max(worst, std::abs(analytic[i] - numeric) / (1.0 + std::abs(numeric)));
    }
  }
  return worst;
}

// Random float64 values in [lo, hi) whose magnitude is at least `margin` (keeps inputs off the
// kinks of relu/abs at 0).
inline Tensor random_off_kink(const Shape& shape, Rng& rng, double lo = -2.0, double hi = 2.0, double margin = 0.05) {
  std::vector<double> v(shape.numel());
  for (double& x : v) {
    do x = rng.uniform(lo, hi);
    while (std::abs(x) < margin);
  }
  return Tensor::from_vector(v, shape, DType::F64);
}

}  // namespace sae::testing
