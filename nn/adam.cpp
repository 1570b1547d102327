// Adam: see adam.h; the arithmetic is the adam_step op (tensor/adam_math.h).
#include "nn/adam.h"

#include "tensor/ops.h"

namespace sae::nn {

Adam::Adam(std::vector<Variable> params, AdamOptions options) : params_(std::move(params)), options_(options) {
  if (!(options_.lr >= 0.0)) throw UsageError(cat("Adam: learning rate must be >= 0, got ", options_.lr));
  if (!(options_.beta1 >= 0.0 && options_.beta1 < 1.0) || !(options_.beta2 >= 0.0 && options_.beta2 < 1.0))
    throw UsageError(cat("Adam: betas must be in [0, 1), got ", options_.beta1, ", ", options_.beta2));
  if (!(options_.eps >= 0.0)) throw UsageError(cat("Adam: eps must be >= 0, got ", options_.eps));
  for (const Variable& p : params_) {
    m_.push_back(Tensor::zeros(p.shape(), p.data().dtype(), p.data().device()));
    v_.push_back(Tensor::zeros(p.shape(), p.data().dtype(), p.data().device()));
  }
}

void Adam::step() { step(options_.lr); }

void Adam::step(double lr) {
  ++step_;
  AdamScalars s;
  s.lr = lr;
  s.beta1 = options_.beta1;
  s.beta2 = options_.beta2;
  s.eps = options_.eps;
  s.weight_decay = options_.weight_decay;
  s.step = step_;
  for (size_t i = 0; i < params_.size(); ++i) {
    Variable& p = params_[i];
    if (!p.grad().defined()) continue;
    adam_step_(p.data(), m_[i], v_[i], p.grad(), s);
  }
}

void Adam::zero_grad() {
  for (Variable& p : params_) p.zero_grad();
}

}  // namespace sae::nn
