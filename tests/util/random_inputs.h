// Random inputs shared by the tests and the sparse benchmarks (no GoogleTest here): host tensors
// with exact zeros or ties, and a b_enc that makes a chosen share of an SAE's features fire.
#pragma once
#include <algorithm>
#include <vector>

#include "tensor/ops.h"
#include "tensor/rng.h"

namespace sae::testing {

// Host values in [lo, hi), about one in ten an exact zero when `zeros` is set.
inline Tensor random_cpu(const Shape& shape, DType d, Rng& rng, double lo = -2.0, double hi = 2.0, bool zeros = true) {
  std::vector<double> v(shape.numel());
  for (double& x : v) x = (zeros && rng.below(10) == 0) ? 0.0 : rng.uniform(lo, hi);
  return Tensor::from_vector(v, shape, d);
}

// Multiples of 0.25 in [-2, 2]: many ties, and sums that land exactly on 0 (the ReLU boundary).
inline Tensor quantized_cpu(const Shape& shape, DType d, Rng& rng) {
  std::vector<double> v(shape.numel());
  for (double& x : v) x = static_cast<double>(rng.below(17)) * 0.25 - 2.0;
  return Tensor::from_vector(v, shape, d);
}

// b_enc [F] (x's dtype, W_enc's device) for which about `density` of the entries of
// relu(x W_enc + b_enc) are > 0: minus the (1 - density) quantile of all pre-activations, computed
// on the host in float64 (density 1: below all of them).
inline Tensor bias_for_density(const Tensor& x, const Tensor& W_enc, double density) {
  std::vector<double> pre =
      matmul(x.to(Device::CPU).to(DType::F64), W_enc.to(Device::CPU).to(DType::F64)).to_vector();
  double threshold;
  if (density >= 1.0) {
    threshold = *std::min_element(pre.begin(), pre.end()) - 1.0;
  } else {
    const size_t k = static_cast<size_t>((1.0 - density) * double(pre.size()));
    std::nth_element(pre.begin(), pre.begin() + k, pre.end());
    threshold = pre[k];
  }
  return Tensor::full(Shape{W_enc.size(1)}, -threshold, x.dtype(), W_enc.device());
}

}  // namespace sae::testing
