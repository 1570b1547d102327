// What the units whose step runs dense GEMMs share (jumprelu, gated: their penalties touch every
// pre-activation): the buffers, the decoder and encoder sides of the backward, the unit-norm
// decoder's projection and renormalisation. A unit adds its forward (its pass over [N, F] into f and
// the loss sums) and the backward of its activation (dL/df into dL/dpre, its own parameters'
// gradients, and the coefficients of u_i it adds to dL/dW_dec).
//   backward:  dx = 2 r;  db_dec = sum_t dx;  dW_dec = f^T dx + (scale_i / n_i) W_dec[i,:];
//              grad = dx W_dec^T  -> the unit's activation backward -> dL/dpre;  dW_enc = x^T dL/dpre
//   unit-norm: dW_dec[i,:] loses its component along the row before Adam, rows renormalised after.
//   latent shards (collectives.h): every decode's partial product is summed over the shards before
//   b_dec is added; a unit completes its sums with complete_step_sums.
// Letters: N tokens (up to max_tokens), D input width, F latents.
#pragma once
#include <string>
#include <vector>

#include "sae/arch/unit.h"

namespace sae {

// At --precision bf16 a float32 SAE keeps f and grad [N, F] in bf16 (activation_dtype, unit.h), and
// pre too unless the unit keeps it float32 (JumpReLU: its straight-through window is narrower than
// bf16's spacing); a unit's other [N, F] buffers follow activations_dtype().
class DenseUnitStep : public UnitStep {
 public:
  // bf16_pre: pre follows the activations' dtype (else it stays in the SAE's dtype).
  DenseUnitStep(bool unit_norm_decoder, bool bf16_pre, const StepShape& shape, DType dtype, Device device);

  std::vector<std::string> backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads,
                                    const FusedAdam* fused) override;
  void after_update(SaeParams& params) override;
  Tensor features() const override { return f_.slice_rows(0, tokens_); }
  Tensor reconstruction() const override { return x_hat_.slice_rows(0, tokens_); }
  Tensor output_gradient() const override { return grad_x_hat_.slice_rows(0, tokens_); }
  const Tensor& feature_counts() const override { return col_count_; }
  StepFeatures step_features() const override;

 protected:
  // grad [N, F] holds dL/df from the reconstruction and becomes dL/dpre; the unit also writes its
  // parameters' gradients and scale_ (the coefficient of u_i its terms add to dL/dW_dec[i,:]).
  virtual void activation_backward(const SaeParams& params, double lambda, SaeParams& grads, Tensor& grad) = 0;
  // Starts a forward of x: tokens_, pre = x W_enc, norms_ (first the [N, F] buffers follow the
  // precision, which may have changed since the last batch).
  void start_forward(const SaeParams& params, const Tensor& x);
  DType activations_dtype() const { return activation_dtype(dtype_); }
  // The end of a forward whose sums are in sums_: pending sums (keeps_sums_on_device) or read_sums().
  StepSums sums_or_pending(double lambda);
  // x_hat = f W_dec + b_dec and r = x_hat - target (into the top of grad_x_hat_).
  void decode(const SaeParams& params, const Tensor& target);
  // out = f W_dec + b_dec; on latent shards the partial products are summed over the shards first.
  void decode_into(Tensor& out, const Tensor& f, const SaeParams& params);

  bool unit_norm_decoder_, bf16_pre_;
  DType dtype_;  // the SAE's
  int64_t tokens_ = 0;
  Tensor pre_, f_, grad_;                  // [max_tokens, F]
  Tensor x_hat_, grad_x_hat_;              // [max_tokens, D_out]: x_hat; r, then dL/dx_hat
  Tensor scratch_rows_;                    // [max_tokens, D_out]
  Tensor col_count_, col_a_, col_b_, norms_, scale_, safe_norms_, tiny_;  // [F]; tiny_ [1]
  Tensor sums_;                            // [4] scratch of reductions
  double lambda_ = 0;                      // the last forward's
};

}  // namespace sae
