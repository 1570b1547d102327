// Architecture and JumpReluPenalty names (see arch.h).
#include "sae/arch.h"

#include "tensor/error.h"

namespace sae {

Architecture parse_architecture(const std::string& text) {
  if (text == "standard") return Architecture::Standard;
  if (text == "topk") return Architecture::TopK;
  if (text == "batchtopk") return Architecture::BatchTopK;
  if (text == "jumprelu") return Architecture::JumpReLU;
  if (text == "gated") return Architecture::Gated;
  throw UsageError(cat("--architecture: expected standard, topk, batchtopk, jumprelu or gated, got '", text, "'"));
}

const char* architecture_name(Architecture a) {
  switch (a) {
    case Architecture::Standard: return "standard";
    case Architecture::TopK: return "topk";
    case Architecture::BatchTopK: return "batchtopk";
    case Architecture::JumpReLU: return "jumprelu";
    case Architecture::Gated: return "gated";
  }
  return "?";
}

bool is_topk_family(Architecture a) { return a == Architecture::TopK || a == Architecture::BatchTopK; }

JumpReluPenalty parse_jumprelu_penalty(const std::string& text) {
  if (text == "step") return JumpReluPenalty::Step;
  if (text == "tanh") return JumpReluPenalty::Tanh;
  throw UsageError(cat("--jumprelu-penalty: expected step or tanh, got '", text, "'"));
}

const char* jumprelu_penalty_name(JumpReluPenalty p) { return p == JumpReluPenalty::Step ? "step" : "tanh"; }

}  // namespace sae
