// The JumpReLU SAE's settings as its step, reference and kernels read them, and its own kernels: an
// op list with a CPU kernel (cpu_jumprelu_kernels.cpp) and a CUDA kernel (cuda_jumprelu_kernels.cu)
// per entry, and their front-end (checks shapes, dtypes and devices). Formulas:
// docs/architectures.md §2.3. Letters: N tokens, F latents, P the pre-activation, theta_i =
// exp(log_threshold_i), n_i = ||W_dec[i,:]||, H(z) = 1[z > 0].
#pragma once
#include "sae/step/kernel_table.h"
#include "tensor/tensor.h"

namespace sae {

// The unit's options, resolved once (jumprelu.cpp jumprelu_settings).
struct JumpReluSettings {
  bool tanh = false;          // penalty: false = step (lambda L0), true = tanh + pre-activation loss
  bool ste_to_input = false;  // the straight-through estimators also feed P (on with tanh)
  double bandwidth = 0.001;   // epsilon of the rectangle kernel K(u) = 1[-1/2 < u < 1/2], u = (P - theta) / eps
  double tanh_c = 4.0;        // c (tanh)
  double pre_act = 0.0;       // lambda_P (tanh)
};

#define JUMPRELU_KERNELS(X)                                                                             \
  /* forward: pre [N,F] holds x W_enc and becomes P = pre + bias; f = P H(P - theta).                   \
     col_count[i] = sum_t H; col_a[i] = sum_t H (step) or tanh(c f n_i) (tanh);                         \
     col_b[i] = sum_t relu(theta_i - P) (tanh; 0 for step). norms [F] = ||W_dec[i,:]|| */                \
  X(jumprelu_forward, void(Tensor & f, Tensor & pre, const Tensor& bias, const Tensor& log_threshold,     \
                           const Tensor& norms, const JumpReluSettings& c, Tensor& col_count,             \
                           Tensor& col_a, Tensor& col_b))                                                 \
  /* backward (docs/architectures.md §2.3): grad [N,F] holds dx_hat W_dec^T on entry and becomes       \
     dL/dP; grad_bias[i] = sum_t dL/dP; grad_log_threshold[i] = theta_i dL/dtheta_i;                     \
     decoder_scale[i] = the coefficient of u_i that the tanh and pre-activation terms add to            \
     dL/dW_dec[i,:] (0 for step). pre holds P (after jumprelu_forward); lambda the sparsity coefficient */ \
  X(jumprelu_backward, void(Tensor & grad, const Tensor& pre, const Tensor& log_threshold,                \
                            const Tensor& norms, const JumpReluSettings& c, double lambda,                \
                            Tensor& grad_bias, Tensor& grad_log_threshold, Tensor& decoder_scale))

struct JumpReluKernelTable {
  JUMPRELU_KERNELS(SAE_KERNEL_SLOT)
};
const JumpReluKernelTable& jumprelu_cpu_kernels();
const JumpReluKernelTable& jumprelu_cuda_kernels();  // CUDA builds only

JUMPRELU_KERNELS(SAE_DECLARE_CPU_KERNEL)
#if defined(SAE_WITH_CUDA)
JUMPRELU_KERNELS(SAE_DECLARE_CUDA_KERNEL)
#endif

// Front-end.
void jumprelu_forward_(Tensor& f, Tensor& pre, const Tensor& bias, const Tensor& log_threshold, const Tensor& norms,
                       const JumpReluSettings& c, Tensor& col_count, Tensor& col_a, Tensor& col_b);
void jumprelu_backward_(Tensor& grad, const Tensor& pre, const Tensor& log_threshold, const Tensor& norms,
                        const JumpReluSettings& c, double lambda, Tensor& grad_bias, Tensor& grad_log_threshold,
                        Tensor& decoder_scale);

}  // namespace sae
