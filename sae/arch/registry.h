// The registry of architecture units: the one list of SAE kinds (registry.cpp), and what the rest of
// the code asks of it. Adding an architecture adds one line to that list (docs/architectures.md
// "Adding an architecture").
#pragma once
#include <string>
#include <vector>

#include "sae/arch/unit.h"

namespace sae {

const std::vector<const ArchUnit*>& arch_units();
// The unit named `name`: UsageError naming --architecture and listing the units otherwise.
const ArchUnit& arch_unit(const std::string& name);
// The unit named `name`, or null.
const ArchUnit* find_arch_unit(const std::string& name);
// The unit of an SAE (its params.kind; Error for an unknown kind, which no loader lets through).
const ArchUnit& unit_of(const SaeParams& params);
std::string arch_unit_names(const char* separator = " | ");

// Every architecture option row of every unit, once each (a family's rows listed by several units
// are one row), in registry order.
const std::vector<ArchOption>& arch_option_rows();
// The units that read option `name`, as "topk, batchtopk"; empty when none does.
std::string units_reading(const std::string& name);
// The units for which `can` holds, as "standard, jumprelu, gated": units_that(&ArchUnit::has_lambda)
// (lambda is their sparsity coefficient), &ArchUnit::trains_transcoders, &ArchUnit::trains_crosscoders.
std::string units_that(bool (ArchUnit::*can)() const);

// The unit whose folder cfg.json (SAELens's "architecture", our sae_cpp.training_architecture) names:
// DataError naming `where` when none does.
const ArchUnit& unit_for_folder(const Json& cfg, const std::string& where);

// Inference with any SAE: f = its unit's encode; x_hat = f W_dec + b_dec (+ x W_skip for a skip
// transcoder, which needs its input x: Error without it).
Tensor sae_encode(const SaeParams& params, const Tensor& x);
// Rows a tool encodes at once when it reads the features back (sae_features, sae_apply, sae_eval,
// sae_steer): `given` when > 0, else as many as one [rows, F] float32 array of max(64 MiB, a quarter
// of W_enc's bytes) holds, 1 to 4096. The encoders make a few such arrays at once; fewer rows than
// this leave the CPU GEMM packing W_enc again for every few rows (at 2^20 latents, 16-row calls
// spent 2.5x their arithmetic in packing).
int64_t encode_block_rows(const SaeParams& params, int64_t given = 0);
Tensor sae_decode(const SaeParams& params, const Tensor& f, const Tensor* x = nullptr);

}  // namespace sae
