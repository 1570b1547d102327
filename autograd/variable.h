// Reverse-mode autograd: Variable (a tensor with an optional gradient and the graph node that made
// it), Node (one recorded op with its backward formula), backward() and the no-grad scope.
// Traversal is iterative and deterministic (vectors, no hash ordering), so deep graphs neither
// overflow the stack nor change the order in which gradients are summed.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sae {

struct Node;

struct VariableImpl {
  Tensor data;
  Tensor grad;  // leaves only: accumulated by backward(), zeroed by zero_grad()
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // null for leaves
};

// Backward formula of a node: given dLoss/dOutput and which inputs need a gradient, returns
// dLoss/dInput for every input (undefined tensors where not needed).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output, const std::vector<bool>& needs)>;

struct Node {
  const char* name = "";
  std::vector<std::shared_ptr<VariableImpl>> inputs;
  BackwardFn backward;
  Tensor grad_output;  // summed here during backward(), released after use
  ~Node();             // frees long chains without recursion
};

class Variable {
 public:
  Variable() = default;
  explicit Variable(Tensor data, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& data() const { return impl_->data; }
  Tensor& data() { return impl_->data; }
  const Tensor& grad() const { return impl_->grad; }
  Tensor& grad() { return impl_->grad; }
  bool requires_grad() const { return impl_->requires_grad; }
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  const Shape& shape() const { return impl_->data.shape(); }
  const std::shared_ptr<VariableImpl>& impl() const { return impl_; }
  const Node* grad_fn() const { return impl_->grad_fn.get(); }

  // Accumulates gradients of this scalar (numel 1) into every leaf that requires grad.
  void backward() const;
  void backward(const Tensor& grad_output) const;
  void zero_grad();          // grad = 0, keeping the buffer
  Variable detach() const;   // same data, no graph, no grad

 private:
  std::shared_ptr<VariableImpl> impl_;
};

// Ops record graph nodes only while gradients are enabled (the default).
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Wraps an op's result: attaches a Node when grad is enabled and any input requires grad.
Variable make_result(Tensor data, const char* name, const std::vector<Variable>& inputs, BackwardFn backward);

}  // namespace sae
