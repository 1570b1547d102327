// SaeStep (see sae_step.h).
#include "sae/arch/sae_step.h"

#include <algorithm>

#include "tensor/ops.h"

namespace sae {

SaeStep::SaeStep(const ArchUnit& unit, const ArchSettings& settings, int64_t max_tokens, int64_t d_in, int64_t d_sae,
                 DType dtype, Device device)
    : unit_(unit), max_tokens_(max_tokens), d_in_(d_in), d_sae_(d_sae) {
  if (max_tokens <= 0 || d_in <= 0 || d_sae <= 0)
    throw UsageError(cat("SaeStep: max_tokens, d_in and d_sae must be positive, got ", max_tokens, ", ", d_in, ", ",
                         d_sae));
  step_ = unit.make_step(settings, max_tokens, d_in, d_sae, dtype, device);
}

void SaeStep::check(const SaeParams& params, const Tensor& x) const {
  unit_.check(params);
  if (params.d_in() != d_in_ || params.d_sae() != d_sae_)
    throw Error(cat("SaeStep: made for d_in ", d_in_, ", d_sae ", d_sae_, "; the SAE has ", params.d_in(), ", ",
                    params.d_sae()));
  if (x.ndim() != 2 || x.size(1) != d_in_) throw Error(cat("SaeStep: batch ", x.describe(), " does not match d_in ", d_in_));
  if (x.size(0) > max_tokens_)
    throw Error(cat("SaeStep: batch of ", x.size(0), " tokens exceeds the workspace (", max_tokens_, ")"));
}

StepSums SaeStep::forward(const SaeParams& params, const Tensor& x, double lambda) {
  check(params, x);
  return step_->forward(params, x, lambda, false);
}

StepSums SaeStep::forward_backward(const SaeParams& params, const Tensor& x, double lambda, SaeParams& grads) {
  check(params, x);
  const StepSums sums = step_->forward(params, x, lambda, true);
  step_->backward(params, x, lambda, grads, nullptr);
  return sums;
}

StepSums SaeStep::train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, double lambda, double lr) {
  check(params, x);
  if (!grads_made_) {
    // Gradient buffers for what Adam is applied to here, not for what the unit's kernels update.
    const std::vector<std::string> fused = step_->always_fused();
    grads_ = params;  // handles: each is replaced below, params keep their storage
    for (auto& [name, t] : grads_.present())
      *t = std::find(fused.begin(), fused.end(), name) != fused.end() ? Tensor()
                                                                      : Tensor::zeros(t->shape(), t->dtype(), t->device());
    grads_made_ = true;
  }
  const StepSums sums = step_->forward(params, x, lambda, true);
  if (!finite(sums)) {
    step_->undo_forward();
    return sums;
  }
  FusedAdam fused;
  fused.adam = &adam;
  fused.scalars = adam.next_step(lr);
  const std::vector<std::string> done = step_->backward(params, x, lambda, grads_, &fused);
  auto p = params.present(), m = adam.m.present(), v = adam.v.present(), g = grads_.present();
  for (size_t i = 0; i < p.size(); ++i) {
    const std::string& name = p[i].first;
    if (std::find(done.begin(), done.end(), name) != done.end()) continue;
    auto grad = std::find_if(g.begin(), g.end(), [&](const auto& entry) { return entry.first == name; });
    if (grad == g.end())
      throw Error(cat("SaeStep: the ", unit_.name(), " step said it updates ", name, " itself, but did not"));
    adam_step_(*p[i].second, *m[i].second, *v[i].second, *grad->second, fused.scalars);
  }
  step_->after_update(params);
  return sums;
}

}  // namespace sae
