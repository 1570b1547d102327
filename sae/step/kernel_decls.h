// The shared kernels' backend functions (sae_kernels.h), declared for the two tables that list them:
// cpu_kernels.cpp (the _cpu functions, defined in cpu_<family>_kernels.cpp) and cuda_kernels.cu (the
// _cuda functions, defined in cuda_<family>_kernels.cu). A signature that drifts from the op list
// stops the compile where the table is built. Everything else calls the front-end (sae_ops.h).
#pragma once
#include "sae/step/sae_kernels.h"

namespace sae {

SAE_STEP_KERNELS(SAE_DECLARE_CPU_KERNEL)
#if defined(SAE_WITH_CUDA)
SAE_STEP_KERNELS(SAE_DECLARE_CUDA_KERNEL)
#endif

}  // namespace sae
