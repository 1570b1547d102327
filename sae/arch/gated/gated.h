// The Gated SAE (Rajamanoharan et al. 2024), as SAELens trains it:
//   f = H(pi_gate) relu(pi_mag), pi_gate = x W_enc + b_gate, pi_mag = x W_enc exp(r_mag) + b_mag
//   loss = rec + lambda sum relu(pi_gate) n + sum (x - relu(pi_gate) sg(W_dec) - sg(b_dec))^2
// (the auxiliary reconstruction through a frozen decoder). No b_enc. Its step runs dense
// (docs/architectures.md §2.4; gated.cpp).
#pragma once
#include "sae/arch/unit.h"

namespace sae {

const ArchUnit& gated_unit();

}  // namespace sae
