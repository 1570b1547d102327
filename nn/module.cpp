// Module bookkeeping, Linear and the losses.
#include "nn/module.h"

#include <cmath>

#include "tensor/ops.h"

namespace sae::nn {

std::vector<std::pair<std::string, Variable>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Variable>> out = params_;
  for (const auto& [name, child] : children_)
    for (auto& [child_name, param] : child->named_parameters()) out.push_back({name + "." + child_name, param});
  return out;
}

std::vector<Variable> Module::parameters() const {
  std::vector<Variable> out;
  for (auto& [name, param] : named_parameters()) out.push_back(param);
  return out;
}

void Module::zero_grad() {
  for (Variable& p : parameters()) p.zero_grad();
}

Variable& Module::register_parameter(const std::string& name, Tensor value) {
  for (const auto& entry : params_)
    if (entry.first == name) throw Error(cat("register_parameter: duplicate name ", name));
  params_.push_back({name, Variable(std::move(value), true)});
  return params_.back().second;
}

void Module::register_module(const std::string& name, Module* child) { children_.push_back({name, child}); }

Linear::Linear(int64_t in_features, int64_t out_features, Rng& rng, DType dtype, Device device) {
  if (in_features <= 0 || out_features <= 0)
    throw Error(cat("Linear: features must be positive, got in=", in_features, " out=", out_features));
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  Tensor w = uniform_tensor(Shape{out_features, in_features}, -bound, bound, rng, dtype, device);
  Tensor b = uniform_tensor(Shape{out_features}, -bound, bound, rng, dtype, device);
  weight = register_parameter("weight", w);
  bias = register_parameter("bias", b);
}

Variable Linear::forward(const Variable& x) const { return ag::matmul(x, weight, false, true) + bias; }

Variable relu(const Variable& x) { return ag::relu(x); }

Variable sum_squared_error(const Variable& prediction, const Variable& target) {
  return ag::sum(ag::square(prediction - target));
}

Variable mean_squared_error(const Variable& prediction, const Variable& target) {
  return ag::mean(ag::square(prediction - target));
}

}  // namespace sae::nn
