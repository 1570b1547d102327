// The element formulas of the architectures' kernels (sae_kernels.h, "the other architectures"),
// one copy for the CPU kernels (cpu_arch_kernels.cpp) and the CUDA kernels (cuda_arch_kernels.cu),
// and the order-preserving integer keys of floats that the selections compare and count.
// Formulas: docs/architectures.md §2.3 (JumpReLU) and §2.4 (Gated). Letters: P the pre-activation,
// theta the threshold, n the decoder row's norm, eps the bandwidth, H(z) = 1[z > 0].
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "sae/step/sae_kernels.h"
#include "tensor/host_device.h"

namespace sae {

// Unsigned keys that sort like the floats (for every finite value and the infinities): the sign
// bit set for positive values, all bits flipped for negative ones.
SAE_HOST_DEVICE inline uint32_t order_key(float v) {
#if defined(__CUDA_ARCH__)
  const uint32_t u = __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
SAE_HOST_DEVICE inline uint64_t order_key(double v) {
#if defined(__CUDA_ARCH__)
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(v));
#else
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// ---- the unit-norm decoder, one row on the host (the CUDA kernels split rows across threads) ----

// g loses its component along u = w / n: g -= (g . u) u, the dot product summed in double.
template <typename T>
inline void project_out_row(T* g, const T* w, T n, int64_t d) {
  if (!(n > T(0))) return;
  double dot = 0;
  for (int64_t c = 0; c < d; ++c) dot += double(g[c]) * double(w[c] / n);
  const T along = static_cast<T>(dot);
  for (int64_t c = 0; c < d; ++c) g[c] = g[c] - along * (w[c] / n);
}

// w /= ||w||, the norm summed in double and rounded once; a zero row stays zero.
template <typename T>
inline void normalize_row(T* w, int64_t d) {
  double squares = 0;
  for (int64_t c = 0; c < d; ++c) squares += double(w[c]) * double(w[c]);
  const T n = static_cast<T>(std::sqrt(squares));
  if (n > T(0))
    for (int64_t c = 0; c < d; ++c) w[c] = w[c] / n;
}

// ---- JumpReLU (f = P H(P - theta)) ----

// What one element adds to its column in the forward: the latent, H, the penalty's term (H for
// step, tanh(c f n) for tanh) and relu(theta - P) (tanh's pre-activation loss; 0 for step).
template <typename T>
struct JumpReluForwardTerms {
  T f, on, penalty, below;
};

template <typename T>
SAE_HOST_DEVICE inline JumpReluForwardTerms<T> jumprelu_forward_element(T P, T theta, T n, bool tanh, T c) {
  JumpReluForwardTerms<T> out;
  out.on = P - theta > T(0) ? T(1) : T(0);
  out.f = out.on > T(0) ? P : T(0);
  if (tanh) {
    out.penalty = math_tanh(c * out.f * n);
    out.below = theta - P > T(0) ? theta - P : T(0);
  } else {
    out.penalty = out.on;
    out.below = T(0);
  }
  return out;
}

// The backward of one element: dL/dP, and what it adds to dL/dtheta_i and to the coefficient of
// u_i in dL/dW_dec[i,:]. g is dx_hat . W_dec[i,:] on entry. K = 1[-1/2 < (P - theta)/eps < 1/2].
template <typename T>
struct JumpReluBackwardTerms {
  T grad_pre, grad_theta, decoder;
};

template <typename T>
SAE_HOST_DEVICE inline JumpReluBackwardTerms<T> jumprelu_backward_element(T g, T P, T theta, T n,
                                                                         const JumpReluConstants& c) {
  const T eps = static_cast<T>(c.bandwidth), lambda = static_cast<T>(c.lambda);
  const T d = P - theta, u = d / eps;
  const bool on = d > T(0), window = u > T(-0.5) && u < T(0.5);
  JumpReluBackwardTerms<T> out{T(0), T(0), T(0)};
  T f = on ? P : T(0), fade = T(0);
  if (c.tanh) {
    const T tt = math_tanh(static_cast<T>(c.tanh_c) * f * n);
    fade = T(1) - tt * tt;
    g = g + static_cast<T>(c.lambda * c.tanh_c) * n * fade;  // d(lambda tanh(c f n))/df
  }
  const T ste = window ? (theta / eps) * g : T(0);  // the JumpReLU's straight-through term
  out.grad_pre = on ? g : T(0);
  if (c.ste_to_input) out.grad_pre = out.grad_pre + ste;
  out.grad_theta = -ste;
  if (!c.tanh) {  // lambda H(P - theta): its straight-through derivative
    const T step = window ? lambda / eps : T(0);
    out.grad_theta = out.grad_theta - step;
    if (c.ste_to_input) out.grad_pre = out.grad_pre + step;
  } else {  // lambda_P relu(theta - P) n
    const T pre_act = static_cast<T>(c.pre_act);
    if (d < T(0)) {
      out.grad_pre = out.grad_pre - pre_act * n;
      out.grad_theta = out.grad_theta + pre_act * n;
    }
    out.decoder = static_cast<T>(c.lambda * c.tanh_c) * f * fade + pre_act * (d < T(0) ? -d : T(0));
  }
  return out;
}

// ---- Gated (f = H(pi_gate) relu(pi_mag), pi_gate = Q + b_gate, pi_mag = Q exp(r_mag) + b_mag) ----

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
