// The Gated SAE's own kernels: an op list with a CPU kernel (cpu_gated_kernels.cpp) and a CUDA kernel
// (cuda_gated_kernels.cu) per entry, and their front-end (checks shapes, dtypes and devices).
// Formulas: docs/architectures.md §2.4. Letters: N tokens, F latents, Q = x W_enc, pi_gate = Q +
// b_gate, pi_mag = Q exp(r_mag) + b_mag, H(z) = 1[z > 0].
#pragma once
#include "sae/step/kernel_table.h"
#include "tensor/tensor.h"

namespace sae {

#define GATED_KERNELS(X)                                                                                \
  /* forward: pre [N,F] holds Q. f = H(pi_gate) relu(pi_mag), gate = relu(pi_gate);                    \
     col_count[i] = sum_t (f > 0), col_gate[i] = sum_t gate */                                         \
  X(gated_forward, void(Tensor & f, Tensor & gate, const Tensor& pre, const Tensor& b_gate,               \
                        const Tensor& b_mag, const Tensor& r_mag, Tensor& col_count, Tensor& col_gate))   \
  /* backward: grad [N,F] holds dL/df (dx_hat W_dec^T) and becomes dL/dQ; grad_gate [N,F] holds the     \
     auxiliary loss's dL/dgate. With H = 1[pi_gate > 0], Hm = 1[pi_mag > 0]: g_mag = grad H Hm,         \
     g_gate = H (lambda n_i + grad_gate), dL/dQ = g_gate + g_mag exp(r_mag); grad_b_gate = sum_t        \
     g_gate, grad_b_mag = sum_t g_mag, grad_r_mag = exp(r_mag) sum_t g_mag Q */                          \
  X(gated_backward, void(Tensor & grad, const Tensor& grad_gate, const Tensor& pre, const Tensor& b_gate, \
                         const Tensor& b_mag, const Tensor& r_mag, const Tensor& norms, double lambda,     \
                         Tensor& grad_b_gate, Tensor& grad_b_mag, Tensor& grad_r_mag))

struct GatedKernelTable {
  GATED_KERNELS(SAE_KERNEL_SLOT)
};
const GatedKernelTable& gated_cpu_kernels();
const GatedKernelTable& gated_cuda_kernels();  // CUDA builds only

GATED_KERNELS(SAE_DECLARE_CPU_KERNEL)
#if defined(SAE_WITH_CUDA)
GATED_KERNELS(SAE_DECLARE_CUDA_KERNEL)
#endif

// Front-end.
void gated_forward_(Tensor& f, Tensor& gate, const Tensor& pre, const Tensor& b_gate, const Tensor& b_mag,
                    const Tensor& r_mag, Tensor& col_count, Tensor& col_gate);
void gated_backward_(Tensor& grad, const Tensor& grad_gate, const Tensor& pre, const Tensor& b_gate,
                     const Tensor& b_mag, const Tensor& r_mag, const Tensor& norms, double lambda, Tensor& grad_b_gate,
                     Tensor& grad_b_mag, Tensor& grad_r_mag);

}  // namespace sae
