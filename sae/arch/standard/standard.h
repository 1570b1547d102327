// The standard SAE, the original study's (docs/contract.md §1):
//   f = relu(x W_enc + b_enc); x_hat = f W_dec + b_dec; loss = sum (x - x_hat)^2 + lambda sum_{t,i} f n_i
// with n_i = ||W_dec[i,:]|| (the decoder-norm-weighted L1). Its step runs dense (five GEMMs) or, with
// --sparse, from f's positive entries only (standard.cpp has the formulas).
#pragma once
#include <string>

#include "sae/arch/unit.h"

namespace sae {

const ArchUnit& standard_unit();

// --sparse: off = the dense GEMMs always; on = the sparse path always; auto = per step, the sparse
// path when this batch's density (active / (N * F), known right after the encoder) is at most the
// step's threshold (the crossover measured by bench/bench_sparse.cpp), so a dense model runs dense.
enum class SparseMode { Off, On, Auto };
SparseMode parse_sparse_mode(const std::string& text);  // "off" | "on" | "auto"; UsageError otherwise
const char* sparse_mode_name(SparseMode mode);
// Auto mode's default threshold on a device.
double auto_max_density(Device device);

}  // namespace sae

namespace sae {
// The standard step's auto-mode threshold (tests move it; Error for another unit's step).
double sparse_auto_max_density(const UnitStep& step);
void set_sparse_auto_max_density(UnitStep& step, double density);
}  // namespace sae
