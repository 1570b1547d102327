// The CPU table of the shared kernels (sae_kernels.h); the kernels are in cpu_<family>_kernels.cpp.
#include "sae/step/kernel_decls.h"

namespace sae {

const SaeKernelTable& sae_cpu_kernels() {
  static const SaeKernelTable table{SAE_STEP_KERNELS(SAE_CPU_KERNEL)};
  return table;
}

}  // namespace sae
