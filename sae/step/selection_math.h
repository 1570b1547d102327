// The order-preserving integer keys of floats that the selection kernels (cpu_selection_kernels.cpp,
// cuda_selection_kernels.cu) compare and count, and how they read a pre-activation, one copy for
// both backends.
#pragma once
#include <cstdint>
#include <cstring>

#include "tensor/half.h"
#include "tensor/host_device.h"

namespace sae {

// Unsigned keys that sort like the floats (for every finite value and the infinities): the sign
// bit set for positive values, all bits flipped for negative ones.
SAE_HOST_DEVICE inline uint32_t order_key(float v) {
#if defined(__CUDA_ARCH__)
  const uint32_t u = __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
SAE_HOST_DEVICE inline uint64_t order_key(double v) {
#if defined(__CUDA_ARCH__)
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(v));
#else
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

}  // namespace sae
