// Independent expectations for the float conversions of the file readers (io/float_convert.h):
// the value of one F16, BF16, F32 or F64 element computed arithmetically from its fields, not by
// the bit shuffling the library uses, and a comparison that treats NaNs as equal.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

namespace sae::fuzz {

// The element at index i of raw little-endian data of a float dtype, as float32.
inline float expected_f32(const uint8_t* raw, const std::string& dtype, size_t i) {
  if (dtype == "F32") {
    float v;
    std::memcpy(&v, raw + 4 * i, 4);
    return v;
  }
  if (dtype == "F64") {
    double v;
    std::memcpy(&v, raw + 8 * i, 8);
    return static_cast<float>(v);
  }
  uint16_t bits;
  std::memcpy(&bits, raw + 2 * i, 2);
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  if (dtype == "BF16") {  // 8 exponent bits (bias 127), 7 mantissa bits
    const int exponent = (bits >> 7) & 0xFF, mantissa = bits & 0x7F;
    if (exponent == 0xFF) return mantissa ? NAN : static_cast<float>(sign * INFINITY);
    if (exponent == 0) return static_cast<float>(sign * std::ldexp(mantissa, -133));
    return static_cast<float>(sign * std::ldexp(128 + mantissa, exponent - 134));
  }
  // F16: 5 exponent bits (bias 15), 10 mantissa bits
  const int exponent = (bits >> 10) & 0x1F, mantissa = bits & 0x3FF;
  if (exponent == 0x1F) return mantissa ? NAN : static_cast<float>(sign * INFINITY);
  if (exponent == 0) return static_cast<float>(sign * std::ldexp(mantissa, -24));
  return static_cast<float>(sign * std::ldexp(1024 + mantissa, exponent - 25));
}

// Equal values (signed zeros distinguished), or both NaN.
inline bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

}  // namespace sae::fuzz
