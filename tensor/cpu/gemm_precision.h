// The CPU side of --precision (tensor/precision.h): the float32 operands of a GEMM as the chosen
// precision reads them. At fp32 that is the operand itself; at tf32 and bf16 a scratch copy with
// every element rounded to nearest even (round_to_precision), which cblas_sgemm then multiplies:
// the products of bf16 values are exact in float32, so this is the reference of a GPU bf16 GEMM up
// to the order of the float32 sums.
#pragma once
#include <cstdint>

#include "tensor/precision.h"

namespace sae {

// `count` floats at `data` as operand `slot` (0 or 1: the two operands of one GEMM use different
// scratch) of a GEMM at `precision`. The pointer stays valid until the next call with that slot on
// this thread.
const float* gemm_operand(const float* data, int64_t count, Precision precision, int slot);

}  // namespace sae
