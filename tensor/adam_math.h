// The one copy of torch.optim.Adam's element formula, for host and device code alike: the adam_step
// kernels (tensor/cpu, tensor/cuda), nn::Adam through them, and the SAE step's kernels that fuse
// Adam into their backward pass (sae/step) all call adam_element.
//
// torch.optim.Adam, single-tensor form (torch/optim/adam.py, _single_tensor_adam), step t >= 1:
//   g += wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The scalars are computed in double on the host and rounded once to the parameter's precision,
// as PyTorch does for a float32 parameter.
#pragma once
#include <cmath>
#include <cstdint>

#include "tensor/host_device.h"

namespace sae {

// The scalars of one Adam step.
struct AdamScalars {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;  // 1 on the first step
};

// AdamScalars in the parameter's precision T, with the bias corrections folded in.
template <typename T>
struct AdamConstants {
  T step_size, sqrt_bias2, b1, b2, eps, one_minus_b1, one_minus_b2, wd;
};

template <typename T>
AdamConstants<T> adam_constants(const AdamScalars& s) {
  const double bias1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.step));
  const double bias2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.step));
  AdamConstants<T> c;
  c.step_size = static_cast<T>(s.lr / bias1);
  c.sqrt_bias2 = static_cast<T>(std::sqrt(bias2));
  c.b1 = static_cast<T>(s.beta1);
  c.b2 = static_cast<T>(s.beta2);
  c.eps = static_cast<T>(s.eps);
  c.one_minus_b1 = static_cast<T>(1.0 - s.beta1);
  c.one_minus_b2 = static_cast<T>(1.0 - s.beta2);
  c.wd = static_cast<T>(s.weight_decay);
  return c;
}

// One element: parameter p with moments m, v and gradient g, updated in place.
template <typename T>
SAE_HOST_DEVICE inline void adam_element(T& p, T& m, T& v, T g, const AdamConstants<T>& c) {
  const T grad = g + c.wd * p;
  const T mi = c.b1 * m + c.one_minus_b1 * grad;
  const T vi = c.b2 * v + c.one_minus_b2 * grad * grad;
  m = mi;
  v = vi;
  p = p - c.step_size * (mi / (math_sqrt(vi) / c.sqrt_bias2 + c.eps));
}

}  // namespace sae
