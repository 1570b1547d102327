// The precision of float32 GEMMs (see precision.h).
#include "tensor/precision.h"

#include "tensor/error.h"

namespace sae {

namespace {
// Each thread's: an evaluation at float32 on one thread (sae/eval/checkpoint_eval.h) must not change
// the GEMMs a prefetch worker runs the language model with at the run's precision on another.
thread_local Precision g_precision = Precision::FP32;
}

Precision parse_precision(const std::string& text) {
  if (text == "fp32") return Precision::FP32;
  if (text == "tf32") return Precision::TF32;
  if (text == "bf16") return Precision::BF16;
  throw UsageError(cat("--precision: expected fp32, tf32 or bf16, got '", text, "'"));
}

const char* precision_name(Precision precision) {
  switch (precision) {
    case Precision::TF32: return "tf32";
    case Precision::BF16: return "bf16";
    default: return "fp32";
  }
}

void set_matmul_precision(Precision precision) { g_precision = precision; }

Precision matmul_precision() { return g_precision; }

}  // namespace sae
