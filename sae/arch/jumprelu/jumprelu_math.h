// The element formulas of the JumpReLU SAE's kernels (f = P H(P - theta)), one copy for the CPU
// kernels (cpu_jumprelu_kernels.cpp) and the CUDA kernels (cuda_jumprelu_kernels.cu).
// Formulas: docs/architectures.md §2.3. Letters: P the pre-activation, theta the threshold, n the
// decoder row's norm, eps the bandwidth, H(z) = 1[z > 0].
#pragma once
#include <cmath>

#include "sae/arch/jumprelu/jumprelu_kernels.h"
#include "tensor/host_device.h"

namespace sae {

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
                                                                         const JumpReluSettings& c,
                                                                         double lambda_value) {
  const T eps = static_cast<T>(c.bandwidth), lambda = static_cast<T>(lambda_value);
  const T d = P - theta, u = d / eps;
  const bool on = d > T(0), window = u > T(-0.5) && u < T(0.5);
  JumpReluBackwardTerms<T> out{T(0), T(0), T(0)};
  T f = on ? P : T(0), fade = T(0);
  if (c.tanh) {
    const T tt = math_tanh(static_cast<T>(c.tanh_c) * f * n);
    fade = T(1) - tt * tt;
    g = g + static_cast<T>(lambda_value * c.tanh_c) * n * fade;  // d(lambda tanh(c f n))/df
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
    out.decoder = static_cast<T>(lambda_value * c.tanh_c) * f * fade + pre_act * (d < T(0) ? -d : T(0));
  }
  return out;
}

}  // namespace sae
