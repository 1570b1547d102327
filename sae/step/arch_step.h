// ArchStep: one training step of the TopK, BatchTopK, JumpReLU and Gated SAEs (sae/arch.h; formulas
// in docs/architectures.md §2), as a fixed sequence of kernels (sae_kernels.h and the generic ops)
// into buffers allocated once. SaeStep (sae_step.h) hands these architectures to it; the autograd
// reference (sae/arch_model.h) is what tests compare it with.
//
// TopK and BatchTopK take the sparse path from the first step: after the encoder GEMM (dense) the
// selection writes the kept latents straight into by-token entry lists, the decoder product and
// every gradient come from those entries only (sparse_decode, sparse_decoder_backward,
// sparse_encoder_backward), and Adam is fused into the backward. AuxK adds a second block of rows
// to the lists: the dead latents' activations a of token t are entries of row N + t, whose
// "output gradient" row is dL/de_hat and whose input row is x_t again, so one backward pass serves
// both terms (the two sets of latents are disjoint: a dead latent fired on no token of the batch).
//   P = x W_enc + b_enc; f: the k largest P per token (the kN largest relu(P)), where > 0
//   x_hat = f W_dec + b_dec; r = x_hat - x; rec = sum r^2; dL/dx_hat = 2 r
//   AuxK: e = -r; a: the k_aux largest P of each token among dead latents, where > 0;
//         e_hat = a W_dec; Z = sum (e - mean_t e)^2; aux = alpha N sum (e_hat - e)^2 / Z;
//         dL/de_hat = 2 alpha N (e_hat - e) / Z
//   unit-norm decoder: each row's gradient loses its component along the row, Adam, then the row
//   is renormalised (inside sparse_decoder_backward)
// JumpReLU and Gated run dense GEMMs (their penalties touch every pre-activation):
//   JumpReLU: pre = P; f = P H(P - theta); x_hat = f W_dec + b_dec; the straight-through backward
//             of jumprelu_backward; dW_enc = x^T dL/dP
//   Gated:    pre = Q = x W_enc; f, gate = relu(pi_gate); x_hat = f W_dec + b_dec and the auxiliary
//             x_gate = gate W_dec + b_dec (the decoder frozen in its gradient)
// Letters: N tokens (up to max_tokens), D input width, F features.
#pragma once
#include <cstdint>
#include <vector>

#include "sae/arch.h"
#include "sae/params.h"
#include "sae/step/sae_kernels.h"
#include "sae/step/sae_step.h"  // StepSums

namespace sae {

class ArchStep {
 public:
  ArchStep(int64_t max_tokens, int64_t d_in, int64_t d_sae, DType dtype, Device device, const ArchOptions& options);

  // Forward only: the loss terms of x [N, D]; nothing is updated (AuxK's dead mask is worked out
  // from the clock without advancing it).
  StepSums forward(const SaeParams& params, const Tensor& x, double lambda);
  // Forward and backward: writes into `grads` (shaped like params: SaeParams::zeros_like) the
  // gradient Adam would see, i.e. projected for a unit-norm decoder. Advances AuxK's clock.
  StepSums forward_backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads);
  // One training step: forward, backward, Adam (fused into the sparse backward), the unit-norm
  // renormalisation, AuxK's clock and BatchTopK's threshold. Nothing changes when the loss is not
  // finite (the caller stops).
  StepSums train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, double lambda, double lr);

  // The last call's results. features() of TopK and BatchTopK is made from the entry lists (a new
  // tensor); aux_activations() is AuxK's a [N, F] (zeros when no latent was dead).
  Tensor features() const;
  Tensor aux_activations() const;
  Tensor reconstruction() const { return x_hat_.slice_rows(0, tokens_); }
  const Tensor& feature_counts() const { return col_count_; }  // tokens each latent fired on [F]
  StepFeatures step_features() const;  // topk, batchtopk: the by-feature lists; others: f [N, F]
  const std::vector<uint8_t>& dead_mask() const { return dead_; }  // AuxK's mask of the last call
  // AuxK's clock: tokens since each latent last fired (a resumed run sets it from its checkpoint).
  std::vector<int64_t>& tokens_since_fired() { return tokens_since_fired_; }
  const ArchOptions& options() const { return options_; }

 private:
  void run_forward(const SaeParams& params, const Tensor& x, bool advance_clock);
  void sparse_forward(const SaeParams& params, const Tensor& x, bool advance_clock);
  void jumprelu_forward(const SaeParams& params, const Tensor& x);
  void gated_forward(const SaeParams& params, const Tensor& x);
  // Backward. With `adam` null the gradients go to `grads`; otherwise the sparse kernels apply
  // Adam on the way to the parameters' storage (grads then holds only what is not fused).
  void sparse_backward(const SaeParams& params, const Tensor& x, SaeParams& grads, SaeAdamState* adam,
                       const AdamScalars& scalars);
  void dense_backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads);
  StepSums sums(double lambda) const;
  SparseFeatures lists(int64_t row0, int64_t rows) const;  // row_ptr viewed from row0, rows + 1 values
  JumpReluConstants jumprelu_constants(double lambda) const;

  ArchOptions options_;
  int64_t max_tokens_, d_in_, d_sae_, k_aux_ = 0, tokens_ = 0;
  bool sparse_;                          // topk or batchtopk
  Tensor pre_;                           // [max_tokens, F]: x W_enc (JumpReLU: P after the forward)
  Tensor f_, grad_, gate_;               // [max_tokens, F], dense architectures (gate_: Gated only)
  Tensor x_hat_;                         // [max_tokens, D]
  Tensor grad_x_hat_;                    // [2 max_tokens, D]: r (then 2 r), and AuxK's dL/de_hat below it
  Tensor x_stacked_;                     // [2 max_tokens, D]: x twice, for the AuxK rows (made on first use)
  Tensor scratch_rows_;                  // [max_tokens, D]: centred residual (AuxK), x_gate (Gated)
  Tensor col_mean_, zero_d_;             // [D]
  Tensor col_sum_, col_count_, col_a_, col_b_, all_sum_, all_count_, norms_, scale_, tiny_;  // [F]; tiny_ [1]
  Tensor dead_flags_;                    // [F]: 1 for AuxK's dead latents
  Tensor sums_;                          // [4] scratch of reductions
  SparseFeatures lists_;                 // row_ptr [2 max_tokens + 1]; room for every entry
  Tensor dpre_;                          // dL/dP at each by-feature entry
  SaeParams grads_;                      // train_step's gradients (made on first use)
  std::vector<int64_t> tokens_since_fired_;
  std::vector<uint8_t> dead_;
  // The last forward.
  int64_t main_entries_ = 0, all_entries_ = 0;
  bool aux_rows_ = false;                // the by-feature lists hold AuxK's rows N .. 2N-1
  double rec_ = 0, sparsity_ = 0, aux_ = 0, active_ = 0, min_positive_ = 0;
};

}  // namespace sae
