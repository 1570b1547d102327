// The autograd reference of every architecture's training loss (docs/architectures.md §2), what the
// fused step (sae/step/arch_step.h) is tested against, and the inference every exported folder
// means (sae_apply, SAELens). Written plainly with autograd ops and host-side selections; nothing
// here is fast.
//   rec = sum (x - x_hat)^2; total = rec + lambda * sparsity + aux, where
//   standard   sparsity = sum f n                          aux = 0
//   topk       sparsity = 0                                aux = AuxK (when dead latents are given)
//   batchtopk  as topk, with the k N largest relu(P) of the batch
//   jumprelu   step: sparsity = sum H(P - theta)           aux = 0
//              tanh: sparsity = sum tanh(c f n)            aux = lambda_P sum relu(theta - P) n
//   gated      sparsity = sum relu(pi_gate) n              aux = sum (x - relu(pi_gate) sg(W_dec) - sg(b_dec))^2
// The straight-through estimators of JumpReLU are explicit autograd functions (jumprelu_ste,
// step_ste); the gated SAE's gate is a constant 0/1 tensor (no gradient); unit-norm projection is
// not part of the loss (the step applies it to the gradient).
// Letters: N tokens, D input width, F features; P = x W_enc + b_enc; n_i = ||W_dec[i,:]||.
#pragma once
#include <cstdint>
#include <vector>

#include "autograd/functions.h"
#include "sae/arch.h"
#include "sae/params.h"

namespace sae {

// The parameters as autograd leaves (sharing storage with the SaeParams they came from).
struct ArchVariables {
  Variable W_enc, b_enc, W_dec, b_dec, log_threshold, b_gate, b_mag, r_mag;
  static ArchVariables leaves(const SaeParams& params, bool requires_grad = true);
  // The gradients backward() left in the leaves, shaped like the parameters (zeros where none).
  SaeParams grads(const SaeParams& like) const;
};

struct ArchReferenceLoss {
  Variable rec, sparsity, aux, total;
  Tensor pre;       // P (gated: pi_mag)
  Tensor f, x_hat;  // latents, reconstruction
  Tensor aux_acts;  // AuxK: the activations a of the dead latents [N, F] (undefined without AuxK)
  std::vector<uint8_t> fired;  // per feature: f > 0 for some token of the batch
  int64_t n_dead = 0;
};

// The values the loss treats as constants (stop-gradient), fixed from outside so that finite
// differences see the same function autograd differentiates: AuxK's residual e (and its Z), the
// gated auxiliary loss's decoder. Undefined tensors are computed as usual.
struct ArchFrozen {
  Tensor residual;      // e = x - x_hat [N, D]
  Tensor W_dec, b_dec;  // gated: the decoder of the auxiliary reconstruction
};

// dead: AuxK's dead mask (F flags, this batch's firings already counted; see dead_after_batch), or
// nullptr for none. Options other than the architecture's own are ignored.
ArchReferenceLoss arch_reference_loss(const ArchOptions& options, const ArchVariables& p, const Tensor& x,
                                      double lambda, const std::vector<uint8_t>* dead,
                                      const ArchFrozen* frozen = nullptr);

// AuxK's dead-latent clock (docs/architectures.md §2.5): every counter grows by the batch's tokens,
// those that fired restart at 0; dead = counter >= dead_tokens. Updates `tokens_since_fired`.
std::vector<uint8_t> dead_after_batch(std::vector<int64_t>& tokens_since_fired, const std::vector<uint8_t>& fired,
                                      int64_t tokens, int64_t dead_tokens);

// JumpReLU with its straight-through estimators (rectangle kernel K(u) = 1[|u| < 1/2], bandwidth
// eps, theta = exp(log_threshold)): f = P H(P - theta);
//   df/dP = H [+ (theta/eps) K((P - theta)/eps) when ste_to_input]; df/dtheta = -(theta/eps) K(..),
// and the log parameter gets theta * dL/dtheta.
Variable jumprelu_ste(const Variable& pre, const Variable& log_threshold, double eps, bool ste_to_input);
// H(P - theta) with dH/dtheta = -(1/eps) K(..); dH/dP = 0 [+ (1/eps) K(..) when ste_to_input].
Variable step_ste(const Variable& pre, const Variable& log_threshold, double eps, bool ste_to_input);

// Selections with the deterministic ties of §2.0 (larger value first, then lower index), by plain
// sorting: flags [rows * cols], row-major. `allowed` (cols flags) limits the candidates of every row.
std::vector<uint8_t> top_k_per_row(const std::vector<double>& values, int64_t rows, int64_t cols, int64_t k,
                                   const std::vector<uint8_t>* allowed = nullptr);
std::vector<uint8_t> top_k_flat(const std::vector<double>& values, int64_t total);

// Inference as the exported folder means it (docs/architectures.md §3): f [N, F] for x [N, D], and
// x_hat = f W_dec + b_dec. topk: relu(P) on the k largest P of each token; batchtopk and jumprelu:
// relu(P) 1[P > threshold] (batchtopk_threshold, or exp(log_threshold)); gated as in arch.h.
Tensor sae_encode(const SaeParams& params, const Tensor& x);
Tensor sae_decode(const SaeParams& params, const Tensor& f);

}  // namespace sae
