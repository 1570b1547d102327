// BFloat16 and Float16: the 16-bit storage types of model weights (a model file's bf16 / f16 tensors
// stay so in memory, lm/model_loader.h) and the exact conversions to and from float32, one copy for
// host and device. Only storage: the ops that read them (copy, embedding, matmul's weight operand;
// tensor/ops.h) widen each element to float32 where they read it, and no op computes in 16 bits.
//   widen(BFloat16): the bits are the top half of a float32's, exactly
//   widen(Float16):  IEEE binary16, subnormals, infinities and NaN included, exactly
//   to_bfloat16, to_float16: round to nearest, ties to even (as torch's .to(torch.bfloat16/float16));
//   NaN stays a (quiet) NaN; float16 overflows to infinity from 65520 up.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tensor/host_device.h"

namespace sae {

struct BFloat16 {
  uint16_t bits;
};
struct Float16 {
  uint16_t bits;
};

SAE_HOST_DEVICE inline float float_of_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

SAE_HOST_DEVICE inline uint32_t bits_of_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

SAE_HOST_DEVICE inline float widen(BFloat16 x) { return float_of_bits(uint32_t(x.bits) << 16); }

SAE_HOST_DEVICE inline float widen(Float16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16, exponent = (x.bits >> 10) & 0x1fu, mantissa = x.bits & 0x3ffu;
  if (exponent == 0x1f) return float_of_bits(sign | 0x7f800000u | (mantissa << 13));  // infinity, NaN
  if (exponent == 0) {                                                                   // zero, subnormal
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;       // mantissa * 2^-24, exact
    return sign ? -magnitude : magnitude;
  }
  return float_of_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

SAE_HOST_DEVICE inline BFloat16 to_bfloat16(float f) {
  uint32_t u = bits_of_float(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even (a carry moves into the exponent, up to infinity)
  return BFloat16{static_cast<uint16_t>(u >> 16)};
}

SAE_HOST_DEVICE inline Float16 to_float16(float f) {
  const uint32_t u = bits_of_float(f);
  const uint32_t sign = (u >> 16) & 0x8000u, magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u)  // NaN: quiet, the top of the payload kept
    return Float16{static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x1ffu))};
  if (magnitude >= 0x477ff000u) return Float16{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520: infinity
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal (or zero) of float16, round(value / 2^-24)
    const uint32_t exponent = magnitude >> 23;
    const uint32_t shift = 126u - exponent;  // value / 2^-24 = (mantissa with its leading 1) >> shift
    if (exponent == 0 || shift > 24) return Float16{static_cast<uint16_t>(sign)};
    const uint32_t full = (magnitude & 0x7fffffu) | 0x800000u;
    uint32_t rounded = full >> shift;
    const uint32_t rest = full & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (rounded & 1u))) ++rounded;
    return Float16{static_cast<uint16_t>(sign | rounded)};
  }
  uint32_t h = (magnitude - (112u << 23)) >> 13;  // rebias the exponent, drop 13 mantissa bits
  const uint32_t rest = magnitude & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
  return Float16{static_cast<uint16_t>(sign | h)};
}

// One element of a float storage type (float, double, BFloat16, Float16) as another: 16-bit values
// are widened exactly; to 16 bits through float32 (as torch converts a float64 to bf16 / f16).
template <typename To, typename From>
SAE_HOST_DEVICE inline To convert_element(From x) {
  if constexpr (std::is_same_v<From, BFloat16> || std::is_same_v<From, Float16>) {
    return convert_element<To>(widen(x));
  } else if constexpr (std::is_same_v<To, BFloat16>) {
    return to_bfloat16(static_cast<float>(x));
  } else if constexpr (std::is_same_v<To, Float16>) {
    return to_float16(static_cast<float>(x));
  } else {
    return static_cast<To>(x);
  }
}

// A kernel templated on a storage type S and a compute type T reads and writes its elements through
// these: float32 and float64 as they are; bfloat16 (activations kept in bf16 at --precision bf16)
// widened to float32 where read and rounded to nearest even where written.
SAE_HOST_DEVICE inline float load_value(float x) { return x; }
SAE_HOST_DEVICE inline double load_value(double x) { return x; }
SAE_HOST_DEVICE inline float load_value(BFloat16 x) { return widen(x); }
template <typename S, typename T>
SAE_HOST_DEVICE inline S store_value(T v) {
  if constexpr (std::is_same_v<S, BFloat16>)
    return to_bfloat16(static_cast<float>(v));
  else
    return static_cast<S>(v);
}

}  // namespace sae
