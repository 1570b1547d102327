// The rounded GEMM operands of --precision tf32 / bf16 on the CPU (see gemm_precision.h).
#include "tensor/cpu/gemm_precision.h"

#include <vector>

#include "tensor/cpu/parallel.h"

namespace sae {

const float* gemm_operand(const float* data, int64_t count, Precision precision, int slot) {
  if (precision == Precision::FP32 || count == 0) return data;
  // Per thread and slot, grown as needed and kept: a training step asks for the same sizes each time.
  thread_local std::vector<float> scratch[2];
  std::vector<float>& out = scratch[slot];
  if (static_cast<int64_t>(out.size()) < count) out.resize(count);
  float* o = out.data();
  if (precision == Precision::BF16) {
#pragma omp parallel for simd if (count >= kParallelMin)
    for (int64_t i = 0; i < count; ++i) o[i] = round_to_bf16(data[i]);
  } else {
#pragma omp parallel for simd if (count >= kParallelMin)
    for (int64_t i = 0; i < count; ++i) o[i] = round_to_tf32(data[i]);
  }
  return o;
}

}  // namespace sae
