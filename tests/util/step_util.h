// Runs the fused SAE step (sae/step/sae_step.h) on an autograd model's parameters, so that tests can
// compare it with the autograd reference on the same objects: gradients land in the model's
// Variable grads (made when missing), Adam updates land in the model's parameters.
#pragma once
#include "sae/model.h"
#include "sae/step/sae_step.h"

namespace sae::testing {

inline StepSums fused_backward(SaeStep& step, SparseAutoencoder& model, const Tensor& x, double lambda) {
  SaeParams grads;
  Variable* vars[4] = {&model.W_enc, &model.b_enc, &model.W_dec, &model.b_dec};
  for (int i = 0; i < 4; ++i) {
    const Tensor& p = vars[i]->data();
    if (!vars[i]->grad().defined()) vars[i]->grad() = Tensor::zeros(p.shape(), p.dtype(), p.device());
    *grads.all()[i] = vars[i]->grad();
  }
  return step.forward_backward(model.params(), x, lambda, grads);
}

inline StepSums fused_train_step(SaeStep& step, SparseAutoencoder& model, SaeAdamState& adam, const Tensor& x,
                                 double lambda, double lr) {
  SaeParams params = model.params();
  return step.train_step(params, adam, x, lambda, lr);
}

}  // namespace sae::testing
