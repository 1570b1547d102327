// What every unit's plain autograd reference shares (sae/arch/unit.h reference_loss): the parameters
// as autograd leaves, the loss terms it returns, the stop-gradient values fixed from outside, AuxK's
// dead-latent clock and the selections by plain sorting (ties: larger value first, then lower index).
// Nothing here is fast; it is what the fused steps and the gradchecks are tested against.
// Letters: N tokens, D input width, F latents.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "sae/params.h"

namespace sae {

// The parameters as autograd leaves (sharing storage with the SaeParams they came from).
struct ArchVariables {
  Variable W_enc, b_enc, W_dec, b_dec, W_skip;
  std::vector<std::pair<std::string, Variable>> own;  // in the unit's order
  int64_t sources = 1;  // a crosscoder's sources (SaeParams::sources)
  // --apply-b-dec-to-input: the encoder sees x - b_dec (b_dec's gradient then flows through it too).
  bool centred = false;
  Variable encoder_input(const Tensor& x) const;  // x, or x - b_dec when centred
  Tensor encoder_input_value(const Tensor& x) const;  // its value (no gradient)
  const Variable& own_var(const std::string& name) const;
  static ArchVariables leaves(const SaeParams& params, bool requires_grad = true);
  // The gradients backward() left in the leaves, shaped like the parameters (zeros where none).
  SaeParams grads(const SaeParams& like) const;
};

struct ReferenceLoss {
  Variable rec, sparsity, aux, total;  // total = rec + lambda * sparsity + aux
  Tensor pre;       // P (gated: pi_mag)
  Tensor f, x_hat;  // latents, reconstruction
  Tensor aux_acts;  // AuxK: the activations a of the dead latents [N, F] (undefined without AuxK)
  std::vector<uint8_t> fired;  // per latent: f > 0 for some token of the batch
  int64_t n_dead = 0;
};

// Values the loss treats as constants, fixed from outside so that finite differences see the same
// function autograd differentiates: AuxK's residual e (and its Z), the gated auxiliary decoder.
// Undefined tensors are computed as usual.
struct ArchFrozen {
  Tensor residual;      // e = x - x_hat [N, D]
  Tensor W_dec, b_dec;  // gated: the decoder of the auxiliary reconstruction
};

// x_hat = f W_dec + b_dec (+ x W_skip), rec = sum (target - x_hat)^2, out.f, out.x_hat, out.fired;
// sparsity and aux default to 0 where the unit left them undefined; total = rec + lambda sparsity + aux.
void finish_reference(ReferenceLoss& out, const ArchVariables& p, const Tensor& x, const Tensor& target,
                      const Variable& f, double lambda);
// n_i, the weight of latent i in the sparsity penalties: ||W_dec[i,:]||, or for a crosscoder the sum
// of its decoder's per-source norms sum_s ||W_dec[i, block s]|| ([F]).
Variable decoder_norms(const Variable& W_dec, int64_t sources);
// Zero [1] variable of x's dtype and device (a loss term a unit does not have).
Variable zero_term(const Tensor& like);

// AuxK's dead-latent clock (docs/architectures.md §2.5): every counter grows by the batch's tokens,
// those that fired restart at 0; dead = counter >= dead_tokens. Updates `tokens_since_fired`.
std::vector<uint8_t> dead_after_batch(std::vector<int64_t>& tokens_since_fired, const std::vector<uint8_t>& fired,
                                      int64_t tokens, int64_t dead_tokens);

// Selections by plain sorting: flags [rows * cols], row-major. `allowed` (cols flags) limits the
// candidates of every row.
std::vector<uint8_t> top_k_per_row(const std::vector<double>& values, int64_t rows, int64_t cols, int64_t k,
                                   const std::vector<uint8_t>* allowed = nullptr);
std::vector<uint8_t> top_k_flat(const std::vector<double>& values, int64_t total);
// A 0/1 (or any) mask as a tensor shaped `shape` in `like`'s dtype and device.
Tensor flags_tensor(const std::vector<uint8_t>& flags, const Shape& shape, const Tensor& like);

}  // namespace sae
