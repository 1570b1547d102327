// A fresh dictionary (W_enc, b_enc, W_dec, b_dec) as DictionaryInit says (sae/arch/unit.h;
// docs/architectures.md §2.7-2.8), and the geometric median b_dec may start at.
// Letters: D input width, F latents, n sample tokens.
#pragma once
#include <cstdint>
#include <vector>

#include "sae/arch/unit.h"

namespace sae {

// The dictionary of `shape` (W_skip at zero for a skip transcoder). `sample` ([n, D_out] row-major,
// float64: the target's rows) is read only for BDecInit::GeometricMedian (DataError when it is empty).
// Draws from `rng` exactly as SaeParams::standard_init when init.tied is false and D_in = D_out.
SaeParams initial_dictionary(const DictionaryInit& init, const DictionaryShape& shape, Rng& rng,
                             const std::vector<double>& sample);

struct GeometricMedian {
  std::vector<double> point;  // [d]
  int64_t iterations = 0;
};
// Weiszfeld's iteration from the mean, as old SAELens's compute_geometric_median with unit weights:
// w_j = 1 / max(||x_j - m||, eps), m = sum w_j x_j / sum w_j; stops after max_iterations or when
// |obj_prev - obj| <= ftol * obj, obj = sum_j ||x_j - m||. Float64 throughout.
GeometricMedian geometric_median(const std::vector<double>& points, int64_t n, int64_t d, int64_t max_iterations = 100,
                                 double eps = 1e-6, double ftol = 1e-20);

// The common dictionary options' rows (read by every unit that lists them): --unit-norm-decoder,
// --init-tied, --init-b-dec (each "auto" = the unit's own default), and their resolution.
ArchOption unit_norm_decoder_row();
ArchOption init_tied_row();
ArchOption init_b_dec_row();
DictionaryInit resolve_dictionary_init(const ArchSettings& s, bool unit_norm_when_auto, bool tied_when_auto,
                                       bool median_when_auto);

}  // namespace sae
