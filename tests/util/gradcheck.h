// Float64 gradient check: compares backward() with central finite differences. Non-scalar outputs
// are reduced as sum(output * R) with a fixed random R, so every output element gets its own
// upstream gradient. Returns the worst mismatch |analytic - numeric| / (1 + |numeric|).
// Inputs may live on any device (all float64); every evaluation runs there, only the probed values
// and the comparison go through the host. Throws if a gradient comes back on another device.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "tensor/ops.h"
#include "tensor/rng.h"
#include "tests/util/compare.h"

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
    const Tensor& input = inputs[k];
    if (input.dtype() != DType::F64) throw Error(cat("gradcheck: input ", k, " is ", input.describe(), ", not f64"));
    const Tensor& grad = vars[k].grad();
    if (grad.defined() && (grad.device() != input.device() || grad.shape() != input.shape()))
      throw Error(cat("gradcheck: gradient ", grad.describe(), " of input ", k, " ", input.describe()));
    std::vector<double> base = input.to_vector();  // host copy, whatever the device
    std::vector<double> analytic = grad.defined() ? grad.to_vector() : std::vector<double>(base.size(), 0.0);
    for (size_t i = 0; i < base.size(); ++i) {
      std::vector<double> plus = base, minus = base;
      plus[i] += eps;
      minus[i] -= eps;
      // The other inputs as given; the probed one rebuilt on its own device.
      std::vector<Tensor> xp = inputs, xm = inputs;
      xp[k] = Tensor::from_vector(plus, input.shape(), DType::F64, input.device());
      xm[k] = Tensor::from_vector(minus, input.shape(), DType::F64, input.device());
      const double numeric = (scalar_loss(xp) - scalar_loss(xm)) / (2 * eps);
      worst = worst_error(worst, std::abs(analytic[i] - numeric) / (1.0 + std::abs(numeric)));  // NaN: +inf
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
