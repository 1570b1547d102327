// Module: owns named parameters (leaf Variables that require grad) and child modules.
// Linear: y = x W^T + b with PyTorch's layout (W [out, in]) and default init.
// Losses: sum of squares and mean squared error.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "tensor/rng.h"

namespace sae::nn {

class Module {
 public:
  virtual ~Module() = default;
  // Parameters in registration order, children's prefixed by "child_name.".
  std::vector<std::pair<std::string, Variable>> named_parameters() const;
  std::vector<Variable> parameters() const;
  void zero_grad();

 protected:
  Variable& register_parameter(const std::string& name, Tensor value);
  void register_module(const std::string& name, Module* child);  // child must outlive this

 private:
  std::vector<std::pair<std::string, Variable>> params_;
  std::vector<std::pair<std::string, Module*>> children_;
};

class Linear : public Module {
 public:
  // torch.nn.Linear's default init: weight and bias uniform in +-1/sqrt(in_features).
  Linear(int64_t in_features, int64_t out_features, Rng& rng, DType dtype = DType::F32,
         Device device = Device::CPU);
  Variable forward(const Variable& x) const;  // x [N, in] -> [N, out]
  // Handles to the registered parameters (Variables share their data and grad).
  Variable weight, bias;
};

Variable relu(const Variable& x);
Variable sum_squared_error(const Variable& prediction, const Variable& target);   // sum (p - t)^2
Variable mean_squared_error(const Variable& prediction, const Variable& target);  // mean (p - t)^2

}  // namespace sae::nn
