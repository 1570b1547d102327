// The Matryoshka BatchTopK SAE's own kernel: an op list with a CPU kernel (cpu_matryoshka_kernels.cpp)
// and a CUDA kernel (cuda_matryoshka_kernels.cu), and its front-end (checks shapes and devices).
// Letters: N tokens, F latents, M prefixes of widths w_0 < ... < w_{M-1} = F; latent i belongs to
// group g when w_{g-1} <= i < w_g (w_{-1} = 0).
#pragma once
#include "sae/step/kernel_table.h"
#include "sae/step/sae_kernels.h"

namespace sae {

#define MATRYOSHKA_KERNELS(X)                                                                           \
  /* levels' by-token lists (row_ptr, cols, row_vals) from `tokens`' (rows 0 .. N-1, then aux_rows more): \
     row g N + t holds token row t's entries of group g (widths [M] i32, increasing, the last F), in   \
     feature order; row M N + j holds token row N + j whole (AuxK's). The caller guarantees the room. */ \
  X(matryoshka_levels, void(SparseFeatures & levels, const SparseFeatures& tokens, const Tensor& widths,  \
                            int64_t n, int64_t aux_rows))

struct MatryoshkaKernelTable {
  MATRYOSHKA_KERNELS(SAE_KERNEL_SLOT)
};
const MatryoshkaKernelTable& matryoshka_cpu_kernels();
const MatryoshkaKernelTable& matryoshka_cuda_kernels();  // CUDA builds only

MATRYOSHKA_KERNELS(SAE_DECLARE_CPU_KERNEL)
#if defined(SAE_WITH_CUDA)
MATRYOSHKA_KERNELS(SAE_DECLARE_CUDA_KERNEL)
#endif

// Front-end.
void matryoshka_levels_(SparseFeatures& levels, const SparseFeatures& tokens, const Tensor& widths, int64_t n,
                        int64_t aux_rows);

}  // namespace sae
