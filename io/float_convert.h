// Conversions between float32 and the floating-point formats of activation files: IEEE 754 half
// (F16), bfloat16 (BF16), float32 (F32) and float64 (F64, rounded to nearest). F16 and BF16 widen
// to float32 exactly, including subnormals, signed zeros, infinities and NaN payloads; float32
// narrows to them rounding to nearest, ties to even (as numpy and torch do).
// Element type names follow safetensors ("F16", "BF16", "F32", "F64"). Assumes a little-endian
// host, as the file formats do.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sae {

float f16_to_f32(uint16_t bits);
float bf16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);
uint16_t f32_to_bf16(float value);

// Rows [begin, begin + count) of an array of `rows` rows, before they are read (and before a buffer
// for them is made): Error naming `what` ("FILE" or "FILE: tensor 'x'") when they are not all there.
void check_row_range(const std::string& what, int64_t rows, int64_t begin, int64_t count);

// True for the dtypes convert_to_f32 accepts.
bool is_float_dtype(const std::string& dtype);

// Converts count elements stored as dtype at src (any alignment) into out. A finite float64 that
// rounds to inf in float32 is a DataError "WHERE: row R, column C: float64 value V is outside
// float32's range" (element N counted from first_element; "element N" when row_width is 0), not an
// inf that later reads as a non-finite input.
void convert_to_f32(const void* src, const std::string& dtype, size_t count, float* out, std::string_view where = "",
                    int64_t first_element = 0, int64_t row_width = 0);
// Converts count float32 values into dtype ("F32", "F16" or "BF16") at out (any alignment).
void convert_from_f32(const float* in, size_t count, const std::string& dtype, void* out);

}  // namespace sae
