// The CUDA table of the shared kernels (sae_kernels.h); the kernels are in cuda_<family>_kernels.cu.
#include "sae/step/kernel_decls.h"

namespace sae {

const SaeKernelTable& sae_cuda_kernels() {
  static const SaeKernelTable table{SAE_STEP_KERNELS(SAE_CUDA_KERNEL)};
  return table;
}

}  // namespace sae
