// The JumpReLU SAE (Rajamanoharan et al. 2024, DeepMind; Anthropic's January 2025 tanh variant):
//   f = P H(P - theta), theta = exp(log_threshold), P = x W_enc + b_enc
//   step penalty: loss = rec + lambda sum H(P - theta)
//   tanh penalty: loss = rec + lambda sum tanh(c f n) + lambda_P sum relu(theta - P) n
// with straight-through estimators of bandwidth eps for the thresholds (and, with tanh, for P).
// Its step runs dense (docs/architectures.md §2.3; jumprelu.cpp).
#pragma once
#include "sae/arch/jumprelu/jumprelu_kernels.h"
#include "sae/arch/unit.h"

namespace sae {

const ArchUnit& jumprelu_unit();
JumpReluSettings jumprelu_settings(const ArchSettings& s);

// The reference's straight-through functions (rectangle kernel K(u) = 1[|u| < 1/2], bandwidth eps,
// theta = exp(log_threshold)): f = P H(P - theta);
//   df/dP = H [+ (theta/eps) K((P - theta)/eps) when ste_to_input]; df/dtheta = -(theta/eps) K(..),
// and the log parameter gets theta * dL/dtheta.
Variable jumprelu_ste(const Variable& pre, const Variable& log_threshold, double eps, bool ste_to_input);
// H(P - theta) with dH/dtheta = -(1/eps) K(..); dH/dP = 0 [+ (1/eps) K(..) when ste_to_input].
Variable step_ste(const Variable& pre, const Variable& log_threshold, double eps, bool ste_to_input);

}  // namespace sae
