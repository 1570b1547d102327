// The precision of float32 GEMMs (matmul and batched_matmul on float32 tensors; float64 GEMMs are
// never affected), chosen by the programs (--precision) for the thread that runs the GEMMs (a
// worker thread takes its creator's: sae/data/prefetch.h) and read by both backends:
//   fp32  plain float32 products and sums (the default);
//   tf32  each input rounded to TF32 (float32's exponent, 10 mantissa bits), products summed in
//         float32: what tensor cores do with cuBLAS's TF32 math mode;
//   bf16  each input rounded to bfloat16 (float32's exponent, 7 mantissa bits), products summed in
//         float32. The product of two bfloat16 numbers is exact in float32, so a GEMM differs from
//         the CPU reference only by the order of the float32 sums.
// CUDA: fp32 is cublasSgemm, tf32 cublasSgemm in CUBLAS_TF32_TENSOR_OP_MATH, bf16 cublasGemmEx on
// bfloat16 copies of the operands (rounded to nearest even) with CUBLAS_COMPUTE_32F. CPU: the
// operands are rounded the same way into scratch copies and multiplied with cblas_sgemm (OpenBLAS
// 0.3.21 has no cblas_sbgemm), so a CPU run at tf32 or bf16 is the reference of a GPU run at that
// precision (slower than fp32 on a CPU, never faster). Everything that is not a GEMM (element-wise
// ops, reductions, the sparse kernels, Adam) stays float32 at every precision. A GEMM may also write
// a bf16 output and read bf16 operands (tensor/ops.h matmul_): the [N, F] activations of the
// standard, TopK-family, gated and JumpReLU steps at bf16 (sae/arch/unit.h activation_dtype;
// docs/contract.md says which tensors each keeps in bf16).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "tensor/host_device.h"

namespace sae {

enum class Precision { FP32, TF32, BF16 };
Precision parse_precision(const std::string& text);  // "fp32" | "tf32" | "bf16"; UsageError naming --precision
const char* precision_name(Precision precision);

// The calling thread's precision of float32 GEMMs (FP32 until set on that thread).
void set_matmul_precision(Precision precision);
Precision matmul_precision();

// Sets a precision for a scope and puts the previous one back (tests, one training run).
class ScopedMatmulPrecision {
 public:
  explicit ScopedMatmulPrecision(Precision precision) : previous_(matmul_precision()) { set_matmul_precision(precision); }
  ~ScopedMatmulPrecision() { set_matmul_precision(previous_); }
  ScopedMatmulPrecision(const ScopedMatmulPrecision&) = delete;
  ScopedMatmulPrecision& operator=(const ScopedMatmulPrecision&) = delete;

 private:
  Precision previous_;
};

// Rounding of one float32 to the inputs of a precision: round to nearest, ties to even, on the
// dropped mantissa bits (a value may round up to infinity, as a conversion does); NaN stays NaN,
// infinities and zeros keep their sign. The result is a float32 whose dropped bits are zero.
SAE_HOST_DEVICE inline uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
SAE_HOST_DEVICE inline float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}
// Keeps the top (32 - dropped) bits of x, rounded to nearest even.
SAE_HOST_DEVICE inline float round_mantissa(float x, int dropped) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return x;  // NaN
  const uint32_t half = (1u << (dropped - 1)) - 1u, lowest_kept = (u >> dropped) & 1u;
  const uint32_t mask = ~((1u << dropped) - 1u);
  return f32_from_bits((u + half + lowest_kept) & mask);
}
SAE_HOST_DEVICE inline float round_to_bf16(float x) { return round_mantissa(x, 16); }
SAE_HOST_DEVICE inline float round_to_tf32(float x) { return round_mantissa(x, 13); }
// The rounding of `precision` (fp32: x itself).
SAE_HOST_DEVICE inline float round_to_precision(float x, Precision precision) {
  return precision == Precision::BF16 ? round_to_bf16(x) : (precision == Precision::TF32 ? round_to_tf32(x) : x);
}

}  // namespace sae
