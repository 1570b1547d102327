// How an op list (an X-macro of (name, signature) entries) becomes a table of kernels per backend:
// a struct with one function pointer per entry, filled from the functions name_cpu / name_cuda, so a
// missing kernel or a wrong signature stops the compile. Used by the shared list (sae_kernels.h)
// and by each unit's own list (sae/arch/<unit>/<unit>_kernels.h).
#pragma once
#include <type_traits>

#include "tensor/tensor.h"

#define SAE_KERNEL_SLOT(name, signature) std::add_pointer_t<signature> name;
#define SAE_CPU_KERNEL(name, signature) name##_cpu,
#define SAE_CUDA_KERNEL(name, signature) name##_cuda,
// Declarations of a list's backend functions: LIST(SAE_DECLARE_CPU_KERNEL), and in CUDA builds
// LIST(SAE_DECLARE_CUDA_KERNEL).
#define SAE_DECLARE_CPU_KERNEL(name, signature) std::type_identity_t<signature> name##_cpu;
#define SAE_DECLARE_CUDA_KERNEL(name, signature) std::type_identity_t<signature> name##_cuda;

namespace sae {
// Thrown where a CUDA table is asked for in a build without CUDA.
[[noreturn]] void no_cuda_kernels(const char* family);
}  // namespace sae

// The table of `family` for `device`: family##_cpu_kernels() or family##_cuda_kernels() (the latter
// only exists in CUDA builds).
#if defined(SAE_WITH_CUDA)
#define SAE_KERNELS_FOR(device, family) \
  ((device) == ::sae::Device::CPU ? family##_cpu_kernels() : family##_cuda_kernels())
#else
#define SAE_KERNELS_FOR(device, family) \
  ((device) == ::sae::Device::CPU ? family##_cpu_kernels() : (::sae::no_cuda_kernels(#family), family##_cpu_kernels()))
#endif
