// Adam exactly as torch.optim.Adam (single-tensor form; bias corrections; eps added after the
// square root; optional L2 weight decay folded into the gradient) for autograd Variables: one fused
// kernel pass per parameter tensor (the adam_step op, whose element formula tensor/adam_math.h
// shares with the fused SAE step).
#pragma once
#include <vector>

#include "autograd/variable.h"
#include "tensor/adam_math.h"

namespace sae::nn {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class Adam {
 public:
  Adam(std::vector<Variable> params, AdamOptions options);
  // Updates every parameter that has a gradient. `lr` overrides options.lr for this step (schedules).
  void step();
  void step(double lr);
  void zero_grad();
  int64_t steps_taken() const { return step_; }
  const AdamOptions& options() const { return options_; }
  const std::vector<Tensor>& first_moments() const { return m_; }  // one per parameter, same shape
  const std::vector<Tensor>& second_moments() const { return v_; }
  const std::vector<Variable>& params() const { return params_; }

 private:
  std::vector<Variable> params_;
  AdamOptions options_;
  std::vector<Tensor> m_, v_;
  int64_t step_ = 0;
};

}  // namespace sae::nn
