// Where a fresh SAE of any architecture starts (docs/architectures.md §2.7-2.8): the standard init
// (PyTorch nn.Linear's, the study's) or the tied init (decoder rows drawn N(0, I) and scaled to norm
// 1, W_enc = W_dec^T as a copy, biases 0), unit decoder rows, b_dec at the geometric median of a
// sample of the data, and each architecture's own tensors (JumpReLU's log threshold, Gated's
// b_gate, b_mag, r_mag).
// Letters: D input width, F features, n sample tokens.
#pragma once
#include <cstdint>
#include <vector>

#include "sae/params.h"
#include "tensor/rng.h"

namespace sae {

enum class BDecInit { Keep, Zero, GeometricMedian };  // Keep: what the init drew (standard: uniform; tied: 0)

struct ArchInit {
  Architecture architecture = Architecture::Standard;
  int64_t k = 0;                       // topk's (batchtopk's) k, kept with the parameters
  bool tied = false;                   // the tied init instead of the standard one
  bool unit_norm_decoder = false;      // decoder rows scaled to norm 1 (the tied init draws them so)
  BDecInit b_dec = BDecInit::Keep;
  double jumprelu_threshold = 0.001;   // theta_0: log_threshold = log(theta_0) for every latent
};

// The parameters for data of width d. `sample` ([n, d] row-major, float64) is read only for
// BDecInit::GeometricMedian (DataError when it is empty). Draws from `rng` exactly as
// SaeParams::standard_init when init.tied is false.
SaeParams arch_initial_params(const ArchInit& init, int64_t d, int64_t features, Rng& rng,
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

}  // namespace sae
