// Declarations of the CPU kernels of the transformer ops (SAE_TRANSFORMER_KERNELS in
// tensor/op_list.h), defined in transformer_kernels.cpp and registered in the CPU kernel table by
// kernels.cpp. Each declaration is made from the list's own signature, so a definition that drifts
// from the list does not link.
#pragma once
#include "tensor/op_list.h"

namespace sae {

#define SAE_DECLARE_CPU_KERNEL(name, signature) \
  using name##_cpu_type = signature;             \
  name##_cpu_type name##_cpu;
SAE_TRANSFORMER_KERNELS(SAE_DECLARE_CPU_KERNEL)
#undef SAE_DECLARE_CPU_KERNEL

}  // namespace sae
