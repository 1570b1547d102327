// The TopK SAE (Gao et al. 2024): f = relu(P) on the k largest P of each token, loss = rec + AuxK
// (dead latents predict the residual). Sparse from the first step (sae/arch/topk_family.h).
#pragma once
#include "sae/arch/unit.h"

namespace sae {

const ArchUnit& topk_unit();

}  // namespace sae
