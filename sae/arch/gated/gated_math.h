// The element formulas of the Gated SAE's kernels (f = H(pi_gate) relu(pi_mag), pi_gate = Q +
// b_gate, pi_mag = Q exp(r_mag) + b_mag, Q = x W_enc), one copy for the CPU kernels
// (cpu_gated_kernels.cpp) and the CUDA kernels (cuda_gated_kernels.cu). Formulas:
// docs/architectures.md §2.4.
#pragma once
#include <cmath>

#include "tensor/host_device.h"

namespace sae {

template <typename T>
struct GatedForwardTerms {
  T f, gate;
};

template <typename T>
SAE_HOST_DEVICE inline GatedForwardTerms<T> gated_forward_element(T Q, T b_gate, T b_mag, T exp_r) {
  const T pi_gate = Q + b_gate, pi_mag = Q * exp_r + b_mag;
  GatedForwardTerms<T> out;
  out.f = pi_gate > T(0) ? (pi_mag > T(0) ? pi_mag : T(0)) : T(0);
  out.gate = pi_gate > T(0) ? pi_gate : T(0);
  return out;
}

// g: dL/df, g_gate: the auxiliary loss's dL/d relu(pi_gate). Returns the magnitude and gate paths'
// gradients (dL/dpi_mag, dL/dpi_gate); dL/dQ = grad_gate + grad_mag exp(r_mag).
template <typename T>
struct GatedBackwardTerms {
  T grad_mag, grad_gate;
};

template <typename T>
SAE_HOST_DEVICE inline GatedBackwardTerms<T> gated_backward_element(T g, T g_gate, T Q, T b_gate, T b_mag, T exp_r,
                                                                   T lambda_n) {
  const T pi_gate = Q + b_gate, pi_mag = Q * exp_r + b_mag;
  GatedBackwardTerms<T> out;
  out.grad_mag = pi_gate > T(0) && pi_mag > T(0) ? g : T(0);
  out.grad_gate = pi_gate > T(0) ? lambda_n + g_gate : T(0);
  return out;
}

}  // namespace sae
