// The BatchTopK SAE (Bussmann et al. 2024): f = relu(P) on the k N largest relu(P) of the batch,
// loss = rec + AuxK; at inference relu(P) 1[P > theta] with theta a moving average of the smallest
// kept activation, so it exports as a SAELens "jumprelu" (sae/arch/topk_family.h).
#pragma once
#include "sae/arch/unit.h"

namespace sae {

const ArchUnit& batchtopk_unit();

}  // namespace sae
