// The standard SAE's own kernels (its dense step; the sparse path uses the shared sparse family of
// sae/step/sae_kernels.h): an op list with a CPU kernel (cpu_standard_kernels.cpp) and a CUDA kernel
// (cuda_standard_kernels.cu) per entry, and their front-end (checks shapes, dtypes and devices).
// Each kernel fuses what would otherwise be several element-wise ops and reductions (one launch or
// two on the GPU instead of four to six); on the CPU each does the same float operations in the same
// order as the op sequence it replaces (standard.cpp's header lists the step), so CPU runs repeat
// those ops' results bit for bit. Letters: N tokens, D output width, F latents. encoder_activate and
// encoder_backward also take f and grad [N, F] stored as bf16 with float32 vectors (the step's
// activations at --precision bf16): each value is widened where read, computed in float32 and rounded
// to nearest even where written; col_sum and col_count of encoder_activate are of the stored values,
// encoder_backward's col_sum of the values before they are rounded.
#pragma once
#include "sae/step/kernel_table.h"
#include "tensor/tensor.h"

namespace sae {

#define STANDARD_KERNELS(X)                                                                             \
  /* f [N,F] holds x W_enc on entry; becomes relu(f + bias). col_sum[j] = sum_t f[t,j],                 \
     col_count[j] = number of t with f[t,j] > 0 (both [F]) */                                          \
  X(encoder_activate, void(Tensor & f, const Tensor& bias, Tensor& col_sum, Tensor& col_count))         \
  /* The penalty's sums, from W_dec [F,D] and encoder_activate's col_sum, col_count [F]:                \
     norms[i] = ||W_dec[i,:]||, l1[0] = sum_i col_sum[i] norms[i], active[0] = sum_i col_count[i] */    \
  X(decoder_penalty, void(Tensor & norms, Tensor & l1, Tensor & active, const Tensor& W_dec,            \
                          const Tensor& col_sum, const Tensor& col_count))                              \
  /* x_hat [N,D] += bias [D] (an undefined bias: x_hat holds it already); r = x_hat - target;           \
     grad [N,D] = 2 r (d rec / d x_hat); rec[0] = sum r^2 */                                           \
  X(decoder_residual, void(Tensor & x_hat, const Tensor& bias, const Tensor& target, Tensor& grad,      \
                           Tensor& rec))                                                                \
  /* The L1 term's gradient through the decoder norms: grad_W_dec[i,:] +=                               \
     lambda col_sum[i] / max(norms[i], 1e-30) W_dec[i,:] */                                              \
  X(decoder_penalty_backward, void(Tensor & grad_W_dec, const Tensor& W_dec, const Tensor& norms,        \
                                   const Tensor& col_sum, double lambda))                               \
  /* grad [N,F] holds dLoss/df from the decoder on entry; becomes f > 0 ? grad + lambda norms[j] : 0    \
     (dLoss/dpre). col_sum[j] = sum_t of the result (dLoss/db_enc) */                                  \
  X(encoder_backward, void(Tensor & grad, const Tensor& f, const Tensor& norms, double lambda, Tensor& col_sum))

struct StandardKernelTable {
  STANDARD_KERNELS(SAE_KERNEL_SLOT)
};
const StandardKernelTable& standard_cpu_kernels();
const StandardKernelTable& standard_cuda_kernels();  // CUDA builds only

STANDARD_KERNELS(SAE_DECLARE_CPU_KERNEL)
#if defined(SAE_WITH_CUDA)
STANDARD_KERNELS(SAE_DECLARE_CUDA_KERNEL)
#endif

// Front-end.
void encoder_activate_(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count);
void decoder_penalty_(Tensor& norms, Tensor& l1, Tensor& active, const Tensor& W_dec, const Tensor& col_sum,
                      const Tensor& col_count);
void decoder_residual_(Tensor& x_hat, const Tensor& bias, const Tensor& target, Tensor& grad, Tensor& rec);
void decoder_penalty_backward_(Tensor& grad_W_dec, const Tensor& W_dec, const Tensor& norms, const Tensor& col_sum,
                               double lambda);
void encoder_backward_(Tensor& grad, const Tensor& f, const Tensor& norms, double lambda, Tensor& col_sum);

}  // namespace sae
