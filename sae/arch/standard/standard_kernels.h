// The standard SAE's own kernels (its dense step; the sparse path uses the shared sparse family of
// sae/step/sae_kernels.h): an op list with a CPU kernel (cpu_standard_kernels.cpp) and a CUDA kernel
// (cuda_standard_kernels.cu) per entry, and their front-end (checks shapes, dtypes and devices).
// Letters: N tokens, F latents.
#pragma once
#include "sae/step/kernel_table.h"
#include "tensor/tensor.h"

namespace sae {

#define STANDARD_KERNELS(X)                                                                             \
  /* f [N,F] holds x W_enc on entry; becomes relu(f + bias). col_sum[j] = sum_t f[t,j],                 \
     col_count[j] = number of t with f[t,j] > 0 (both [F]) */                                          \
  X(encoder_activate, void(Tensor & f, const Tensor& bias, Tensor& col_sum, Tensor& col_count))         \
  /* grad [N,F] holds dLoss/df on entry; becomes f > 0 ? grad + row_add : 0 (dLoss/dpre).               \
     col_sum[j] = sum_t of the result (dLoss/db_enc) */                                                \
  X(encoder_backward, void(Tensor & grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum))

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
void encoder_backward_(Tensor& grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum);

}  // namespace sae
