// F16/BF16/F64 -> F32 conversion by bit manipulation (no hardware half support needed).
#include "io/float_convert.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "tensor/error.h"

namespace sae {

static_assert(std::endian::native == std::endian::little, "file readers assume a little-endian host");

// Half: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. Float: 8 exponent bits (bias
// 127), 23 mantissa bits. Normal numbers re-bias the exponent (+112) and widen the mantissa;
// subnormals are mantissa * 2^-24, exact in float32.
float f16_to_f32(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  uint32_t exponent = (bits >> 10) & 0x1F;
  uint32_t mantissa = bits & 0x3FF;
  uint32_t out;
  if (exponent == 0x1F) {
    out = sign | 0x7F800000u | (mantissa << 13);  // inf, or NaN with its payload
  } else if (exponent == 0) {
    float magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // zero or subnormal
    out = sign | std::bit_cast<uint32_t>(magnitude);
  } else {
    out = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  return std::bit_cast<float>(out);
}

// bfloat16 is the top half of a float32.
float bf16_to_f32(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

bool is_float_dtype(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64";
}

void convert_to_f32(const void* src, const std::string& dtype, size_t count, float* out) {
  const uint8_t* bytes = static_cast<const uint8_t*>(src);
  if (dtype == "F32") {
    if (count > 0) std::memcpy(out, bytes, count * 4);
  } else if (dtype == "F16" || dtype == "BF16") {
    bool half = dtype == "F16";
    for (size_t i = 0; i < count; ++i) {
      uint16_t bits;
      std::memcpy(&bits, bytes + 2 * i, 2);
      out[i] = half ? f16_to_f32(bits) : bf16_to_f32(bits);
    }
  } else if (dtype == "F64") {
    for (size_t i = 0; i < count; ++i) {
      double value;
      std::memcpy(&value, bytes + 8 * i, 8);
      out[i] = static_cast<float>(value);
    }
  } else {
    throw Error(cat("convert_to_f32: cannot convert ", dtype, " to float32"));
  }
}

}  // namespace sae
