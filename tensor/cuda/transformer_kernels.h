// Declarations of the CUDA kernels of the transformer ops (SAE_TRANSFORMER_KERNELS in
// tensor/op_list.h), defined in transformer_kernels.cu and registered in the CUDA kernel table by
// kernels.cu. Each declaration is made from the list's own signature, so a definition that drifts
// from the list does not link.
#pragma once
#include "tensor/op_list.h"

namespace sae {

#define SAE_DECLARE_CUDA_KERNEL(name, signature) \
  using name##_cuda_type = signature;             \
  name##_cuda_type name##_cuda;
SAE_TRANSFORMER_KERNELS(SAE_DECLARE_CUDA_KERNEL)
#undef SAE_DECLARE_CUDA_KERNEL

}  // namespace sae
