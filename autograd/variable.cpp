// Variable, Node, the backward traversal and the no-grad flag.
#include "autograd/variable.h"

#include <unordered_set>

#include "tensor/ops.h"

namespace sae {

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

// Releasing the last reference to the head of a long chain would destroy node after node
// recursively. Instead, detach the inputs' nodes we solely own and destroy them from a loop.
Node::~Node() {
  std::vector<std::shared_ptr<Node>> pending;
  auto harvest = [&pending](Node& node) {
    for (auto& input : node.inputs)
      if (input && input.use_count() == 1 && input->grad_fn) pending.push_back(std::move(input->grad_fn));
    node.inputs.clear();
  };
  harvest(*this);
  while (!pending.empty()) {
    std::shared_ptr<Node> node = std::move(pending.back());
    pending.pop_back();
    if (node.use_count() == 1) harvest(*node);
  }  // each node dies here with no inputs left, so its own destructor does no work
}

Variable::Variable(Tensor data, bool requires_grad) : impl_(std::make_shared<VariableImpl>()) {
  impl_->data = std::move(data);
  impl_->requires_grad = requires_grad;
}

void Variable::zero_grad() {
  if (impl_->grad.defined()) fill_(impl_->grad, 0.0);
}

Variable Variable::detach() const { return Variable(impl_->data, false); }

void Variable::backward() const {
  if (impl_->data.numel() != 1)
    throw Error(cat("backward: needs a scalar (one element) or an explicit gradient, got ", impl_->data.describe()));
  backward(Tensor::full(impl_->data.shape(), 1.0, impl_->data.dtype(), impl_->data.device()));
}

namespace {

void accumulate_leaf(VariableImpl& leaf, const Tensor& grad) {
  if (!leaf.grad.defined())
    leaf.grad = grad.clone();  // the leaf owns its buffer; grad may alias other tensors
  else
    add_(leaf.grad, grad);
}

// Nodes reachable from root, in an order where every node comes before the nodes it feeds
// (reverse post-order of an iterative depth-first search over inputs in their listed order).
std::vector<Node*> topological_order(Node* root) {
  std::vector<Node*> post_order;
  std::unordered_set<Node*> visited;  // membership only; never iterated
  std::vector<std::pair<Node*, size_t>> stack{{root, 0}};
  visited.insert(root);
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      Node* child = node->inputs[next++]->grad_fn.get();
      if (child && visited.insert(child).second) stack.push_back({child, 0});
    } else {
      post_order.push_back(node);
      stack.pop_back();
    }
  }
  return {post_order.rbegin(), post_order.rend()};
}

}  // namespace

void Variable::backward(const Tensor& grad_output) const {
  if (!impl_->requires_grad) throw Error("backward: the variable does not require grad");
  if (grad_output.shape() != impl_->data.shape())
    throw Error(cat("backward: gradient ", grad_output.describe(), " does not match ", impl_->data.describe()));
  if (!impl_->grad_fn) {
    accumulate_leaf(*impl_, grad_output);
    return;
  }
  NoGradGuard no_grad;  // backward formulas are not themselves recorded
  std::vector<Node*> order = topological_order(impl_->grad_fn.get());
  impl_->grad_fn->grad_output = grad_output;
  for (Node* node : order) {
    if (!node->grad_output.defined()) continue;
    std::vector<bool> needs(node->inputs.size());
    for (size_t i = 0; i < needs.size(); ++i) needs[i] = node->inputs[i]->requires_grad;
    std::vector<Tensor> grads = node->backward(node->grad_output, needs);
    node->grad_output = Tensor();
    for (size_t i = 0; i < node->inputs.size(); ++i) {
      if (!needs[i] || i >= grads.size() || !grads[i].defined()) continue;
      VariableImpl& input = *node->inputs[i];
      if (grads[i].shape() != input.data.shape())
        throw Error(cat("backward of ", node->name, ": gradient ", grads[i].describe(), " for input ",
                        input.data.describe()));
      if (!input.grad_fn)
        accumulate_leaf(input, grads[i]);
      else if (!input.grad_fn->grad_output.defined())
        input.grad_fn->grad_output = grads[i];
      else
        input.grad_fn->grad_output = add(input.grad_fn->grad_output, grads[i]);
    }
  }
}

Variable make_result(Tensor data, const char* name, const std::vector<Variable>& inputs, BackwardFn backward) {
  Variable out(std::move(data), false);
  if (!grad_enabled()) return out;
  bool any = false;
  for (const Variable& v : inputs) any = any || v.requires_grad();
  if (!any) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  for (const Variable& v : inputs) node->inputs.push_back(v.impl());
  node->backward = std::move(backward);
  out.impl()->requires_grad = true;
  out.impl()->grad_fn = std::move(node);
  return out;
}

}  // namespace sae
