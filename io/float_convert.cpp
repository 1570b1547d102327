// F16/BF16/F64 -> F32 conversion by bit manipulation (no hardware half support needed).
#include "io/float_convert.h"

#include <bit>
#include <charconv>
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

// Round to nearest, ties to even, as numpy's astype(float16) and torch's .half() do: values past
// the largest half (65504, plus half an ulp) become infinity, values below the smallest subnormal
// round to 0 or to it, NaN stays NaN (quiet, keeping the sign).
uint16_t f32_to_f16(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t magnitude = x & 0x7FFFFFFF;
  if (magnitude > 0x7F800000) return sign | 0x7E00;          // NaN
  if (magnitude >= 0x477FF000) return sign | 0x7C00;         // >= 65520: infinity (or was one)
  if (magnitude < 0x38800000) {                              // below 2^-14: a subnormal half or 0
    // The half subnormal is magnitude / 2^-24 rounded to an integer (ties to even).
    const float scaled = std::bit_cast<float>(magnitude) * 16777216.0f;  // exact: times 2^24
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  // Normal: re-bias the exponent (-112 << 23) and round the 13 dropped mantissa bits.
  uint32_t rounded = magnitude - (112u << 23);
  const uint32_t dropped = rounded & 0x1FFF, halfway = 0x1000;
  rounded >>= 13;
  if (dropped > halfway || (dropped == halfway && (rounded & 1))) ++rounded;  // may carry into the exponent
  return sign | static_cast<uint16_t>(rounded);
}

// The top 16 bits of the float32, rounded to nearest even on the 16 dropped bits; NaN stays NaN.
uint16_t f32_to_bf16(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((x >> 16) | 0x0040);  // quiet NaN
  const uint32_t rounding = 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

void convert_from_f32(const float* in, size_t count, const std::string& dtype, void* out) {
  uint8_t* bytes = static_cast<uint8_t*>(out);
  if (dtype == "F32") {
    if (count > 0) std::memcpy(bytes, in, count * 4);
  } else if (dtype == "F16" || dtype == "BF16") {
    const bool half = dtype == "F16";
    for (size_t i = 0; i < count; ++i) {
      const uint16_t bits = half ? f32_to_f16(in[i]) : f32_to_bf16(in[i]);
      std::memcpy(bytes + 2 * i, &bits, 2);
    }
  } else {
    throw Error(cat("convert_from_f32: cannot write dtype '", dtype, "' (F32, F16 or BF16)"));
  }
}

bool is_float_dtype(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64";
}

void convert_to_f32(const void* src, const std::string& dtype, size_t count, float* out, std::string_view where,
                    int64_t first_element, int64_t row_width) {
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
      if (std::isinf(out[i]) && std::isfinite(value)) {
        const int64_t at = first_element + static_cast<int64_t>(i);
        char text[32] = {};
        std::to_chars(text, text + sizeof text - 1, value);  // the shortest that reads back
        throw DataError(cat(where.empty() ? std::string_view("float64 data") : where, ": ",
                            row_width > 0 ? cat("row ", at / row_width, ", column ", at % row_width) : cat("element ", at),
                            ": float64 value ", text, " is outside float32's range (it rounds to inf; float32's "
                            "largest value is 3.4028234663852886e+38)"));
      }
    }
  } else {
    throw Error(cat("convert_to_f32: cannot convert ", dtype, " to float32"));
  }
}

void check_row_range(const std::string& what, int64_t rows, int64_t begin, int64_t count) {
  if (begin < 0 || count < 0 || begin > rows || count > rows - begin)
    throw Error(cat(what, ": rows [", begin, ", ", begin + count, ") out of range: it has ", rows, " rows"));
}

}  // namespace sae
