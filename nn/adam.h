// Adam exactly as torch.optim.Adam (single-tensor form; bias corrections; eps added after the
// square root; optional L2 weight decay folded into the gradient). One fused kernel pass per
// parameter tensor (the adam_step kernel). The moments and the step count are exposed so that
// checkpoints can save and restore them.
#pragma once
#include <vector>

#include "autograd/variable.h"
#include "tensor/op_list.h"

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
  // For kernels that apply Adam themselves (the fused sparse SAE step, sae/sae_step.h): counts one
  // step and returns the scalars step(lr) would use for it. step(lr) is begin_step(lr) followed by
  // adam_step_ on every parameter that has a gradient.
  AdamScalars begin_step(double lr);
  // Position of `param` in params() (and in the moment lists); -1 when this optimizer does not hold it.
  int index_of(const Variable& param) const;

  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t step) { step_ = step; }
  const AdamOptions& options() const { return options_; }
  std::vector<Tensor>& first_moments() { return m_; }   // one per parameter, same shape
  std::vector<Tensor>& second_moments() { return v_; }
  const std::vector<Variable>& params() const { return params_; }

 private:
  std::vector<Variable> params_;
  AdamOptions options_;
  std::vector<Tensor> m_, v_;
  int64_t step_ = 0;
};

}  // namespace sae::nn
