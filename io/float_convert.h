// Exact conversions to float32 from the floating-point formats found in activation files:
// IEEE 754 half (F16), bfloat16 (BF16), float32 (F32) and float64 (F64, rounded to nearest).
// F16 and BF16 convert exactly, including subnormals, signed zeros, infinities and NaN payloads.
// Element type names follow safetensors ("F16", "BF16", "F32", "F64"). Assumes a little-endian
// host, as the file formats do.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sae {

float f16_to_f32(uint16_t bits);
float bf16_to_f32(uint16_t bits);

// True for the dtypes convert_to_f32 accepts.
bool is_float_dtype(const std::string& dtype);

// Converts count elements stored as dtype at src (any alignment) into out.
void convert_to_f32(const void* src, const std::string& dtype, size_t count, float* out);

}  // namespace sae
