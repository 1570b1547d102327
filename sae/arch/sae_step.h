// SaeStep: the one owner of a dictionary's training step, for every architecture: an SAE (x
// reconstructs itself), a transcoder (x reconstructs a target of another width; with W_skip, x_hat +=
// x W_skip) or a crosscoder (x and its target are several activations concatenated). It checks the
// batch and the parameters, runs the unit's step (sae/arch/unit.h UnitStep: the fused forward and
// backward of that architecture, as a fixed sequence of kernels into buffers allocated once) and
// applies Adam to every parameter the unit's kernels did not update themselves. A skip path is the
// step's, not the unit's: the unit reconstructs target - x W_skip, and W_skip's gradient is x^T of
// the unit's output gradient. The numbers are those of the unit's autograd reference (reference_loss
// followed by backward()), up to floating-point order; each unit's tests compare the two. On several
// ranks (set_collectives) the step is a latent shard's and a replica's part of one step of the whole
// SAE on the whole batch.
// Letters: N tokens in the batch (up to max_tokens), D_in, D_out the widths, F latents.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "sae/arch/unit.h"

namespace sae {

class SaeStep {
 public:
  SaeStep(const ArchUnit& unit, const ArchSettings& settings, const StepShape& shape, DType dtype, Device device);
  // An SAE: d_out = d_in.
  SaeStep(const ArchUnit& unit, const ArchSettings& settings, int64_t max_tokens, int64_t d_in, int64_t d_sae,
          DType dtype, Device device);

  // Forward only (nothing is updated; the unit's clocks do not move). x [N, D_in]; target [N, D_out]
  // (x itself when omitted).
  StepSums forward(const SaeParams& params, const Tensor& x, double lambda);
  StepSums forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda);
  // Forward and backward (N <= max_tokens): writes into `grads` (SaeParams::zeros_like of params)
  // the gradient Adam would see. Moves the unit's clocks.
  StepSums forward_backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads);
  StepSums forward_backward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda,
                            SaeParams& grads);
  // One training step: forward, backward and one Adam step at learning rate lr. When the loss is not
  // finite nothing is updated (the caller stops), except with pending sums (set_sums_on_device):
  // then nothing reads the loss before the update, and the caller checks it with read_sums().
  StepSums train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, double lambda, double lr);
  StepSums train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, const Tensor& target, double lambda,
                      double lr);

  // Views of the last call's results (valid until the next call).
  Tensor features() const { return step_->features(); }  // f [N, F]
  Tensor reconstruction() const;                          // x_hat [N, D_out] (with the skip path)
  const Tensor& feature_counts() const { return step_->feature_counts(); }
  StepFeatures step_features() const { return step_->step_features(); }
  // Tokens since each latent last fired (AuxK's clock; a resumed run sets it); nullopt without one.
  std::optional<std::vector<int64_t>> dead_clock() const { return step_->dead_clock(); }
  void set_dead_clock(const std::vector<int64_t>& clock) { step_->set_dead_clock(clock); }
  const ArchUnit& unit() const { return unit_; }
  UnitStep& unit_step() { return *step_; }

  // A distributed run (collectives.h, docs/distributed.md): the unit's step calls `c` at its defined
  // points. With several replicas, train_step keeps every gradient (no Adam fused into the backward
  // kernels), sums them over the replicas (the loss is a sum over the batch's tokens, so the
  // batch's gradient is the sum of the replicas'), then applies Adam to every parameter.
  void set_collectives(Collectives* c);

  // Clips the gradient as SAELens does (torch's clip_grad_norm_(max_norm) on the gradient of its mean
  // loss): our loss is a sum over the batch's N tokens, so its gradient g is scaled by
  // min(1, N max_norm / (||g|| + N 1e-6)), ||g|| the global norm over every parameter. 0: off. With
  // it, train_step keeps every gradient (no Adam fused into the backward kernels), as with replicas.
  // Over latent shards the norm sums every shard's latents once and b_dec / W_skip once; over
  // replicas N is the whole batch's tokens (their gradient is the batch's already).
  void set_max_grad_norm(double max_norm) { max_grad_norm_ = max_norm; }

  // SAELens's apply_b_dec_to_input in training (--apply-b-dec-to-input): the unit's encoder sees
  // x - b_dec (into a buffer), its decoder still adds b_dec, and b_dec's gradient gains minus the
  // loss's gradient by that input summed over the tokens (ArchUnit::encoder_input_gradient; over
  // latent shards summed over them). An SAE only (d_in = d_out, no skip path, one source). With it,
  // train_step keeps every gradient (no Adam fused into the backward kernels), as with replicas.
  void set_input_centring(bool on);

  // Whether train_step keeps every gradient (no Adam fused into the unit's kernels): over replicas,
  // with clipping or with input centring. A memory count asks before the step exists.
  static bool keeps_every_gradient(bool replicated, double max_grad_norm, bool centring) {
    return replicated || max_grad_norm > 0 || centring;
  }

  // Lets the unit leave its loss sums on the device (a GPU step then waits for nothing until they are
  // read): forward, forward_backward and train_step may return sums with `pending` set, completed
  // by read_sums() (the last call's). Units that read values back inside their step anyway (the
  // TopK family) and steps with collectives return complete sums.
  void set_sums_on_device(bool keep) { step_->set_sums_on_device(keep); }
  StepSums read_sums() { return step_->read_sums(); }

 private:
  void check(const SaeParams& params, const Tensor& x, const Tensor& target) const;
  // The unit's target: target itself, or target - x W_skip (into skip_target_).
  Tensor unit_target(const SaeParams& params, const Tensor& x, const Tensor& target);
  StepSums run_forward(const SaeParams& params, const Tensor& x, const Tensor& target, double lambda, bool train);
  void skip_gradient(const Tensor& x, SaeParams& grads) const;
  // The unit's input: x, or x - b_dec into centred_ when centring.
  Tensor unit_input(const SaeParams& params, const Tensor& x);
  // b_dec's gradient less the encoder input's (centring only).
  void centring_gradient(const SaeParams& params, SaeParams& grads) const;

  const ArchUnit& unit_;
  std::unique_ptr<UnitStep> step_;
  StepShape shape_;
  SaeParams grads_;  // train_step's gradients (made on first use; none for the unit's always_fused())
  bool grads_made_ = false;
  Tensor skip_target_, skip_out_;  // [max_tokens, D_out]: skip transcoders only (made on first use)
  bool skipped_ = false;           // the last forward had a skip path
  int64_t tokens_ = 0;
  double max_grad_norm_ = 0;
  bool centring_ = false;
  Tensor centred_;  // [max_tokens, D_in]: x - b_dec (centring only; made on first use)
};

}  // namespace sae
