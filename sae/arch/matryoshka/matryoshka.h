// The Matryoshka BatchTopK SAE (Bussmann et al. 2025; SAELens's matryoshka_batchtopk): BatchTopK's
// latents split into nested prefixes of widths w_0 < ... < w_{M-1} = F, each prefix reconstructing x
// on its own:  x_hat_m = f[:, :w_m] W_dec[:w_m] + b_dec,  loss = sum_m ||x - x_hat_m||^2 + AuxK, so the
// first latents learn the most general features. It infers and exports as BatchTopK does (a SAELens
// "jumprelu" with one threshold). Formulas and the step: docs/architectures.md §2.10; matryoshka.cpp.
#pragma once
#include "sae/arch/unit.h"

namespace sae {

const ArchUnit& matryoshka_unit();

}  // namespace sae
