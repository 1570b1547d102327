// SaeStep: the one owner of an SAE's training step, for every architecture. It checks the batch and
// the parameters, runs the unit's step (sae/arch/unit.h UnitStep: the fused forward and backward of
// that architecture, as a fixed sequence of kernels into buffers allocated once) and applies Adam to
// every parameter the unit's kernels did not update themselves. The numbers are those of the unit's
// autograd reference (reference_loss followed by backward()), up to floating-point order; each unit's
// tests compare the two.
// Letters: N tokens in the batch (up to max_tokens), D input width, F latents.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "sae/arch/unit.h"

namespace sae {

class SaeStep {
 public:
  SaeStep(const ArchUnit& unit, const ArchSettings& settings, int64_t max_tokens, int64_t d_in, int64_t d_sae,
          DType dtype, Device device);

  // Forward only (nothing is updated; the unit's clocks do not move).
  StepSums forward(const SaeParams& params, const Tensor& x, double lambda);
  // Forward and backward for x [N, D] (N <= max_tokens): writes into `grads` (SaeParams::zeros_like
  // of params) the gradient Adam would see. Moves the unit's clocks.
  StepSums forward_backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads);
  // One training step: forward, backward and one Adam step at learning rate lr. When the loss is not
  // finite nothing is updated (the caller stops).
  StepSums train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, double lambda, double lr);

  // Views of the last call's results (valid until the next call).
  Tensor features() const { return step_->features(); }              // f [N, F]
  Tensor reconstruction() const { return step_->reconstruction(); }  // x_hat [N, D]
  const Tensor& feature_counts() const { return step_->feature_counts(); }
  StepFeatures step_features() const { return step_->step_features(); }
  // Tokens since each latent last fired (AuxK's clock; a resumed run sets it); null without one.
  std::vector<int64_t>* dead_clock() { return step_->dead_clock(); }
  const ArchUnit& unit() const { return unit_; }
  UnitStep& unit_step() { return *step_; }

 private:
  void check(const SaeParams& params, const Tensor& x) const;

  const ArchUnit& unit_;
  std::unique_ptr<UnitStep> step_;
  int64_t max_tokens_, d_in_, d_sae_;
  SaeParams grads_;  // train_step's gradients (made on first use; none for the unit's always_fused())
  bool grads_made_ = false;
};

}  // namespace sae
