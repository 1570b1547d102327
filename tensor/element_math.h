// The element formulas of the element-wise ops (tensor/op_list.h), one copy for host and device:
// the CPU kernels (tensor/cpu) and the CUDA kernels (tensor/cuda) both call apply_unary and
// apply_binary, with the op known at compile time so the switch folds away.
#pragma once
#include "tensor/host_device.h"
#include "tensor/op_list.h"

namespace sae {

// GPT-2's tanh approximation of GELU ("gelu_new" in transformers):
//   gelu_new(z) = 0.5 z (1 + tanh(u)),  u = sqrt(2/pi) (z + 0.044715 z^3).
// We use the identity 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): one exp instead of a tanh (several
// times cheaper on the CPU, where neither is vectorised) and no cancellation near u = -inf.
// Agrees with the tanh form to float rounding.
template <typename T>
SAE_HOST_DEVICE inline T gelu_new_u(T z) {
  return (z + T(0.044715) * (z * z * z)) * T(0.7978845608028654);
}
template <typename T>
SAE_HOST_DEVICE inline T gelu_new_value(T z) {
  return z / (T(1) + math_exp(T(-2) * gelu_new_u(z)));
}
// d/dz = s + z s (1 - s) 2 u'(z), s = 1 / (1 + exp(-2u)), u'(z) = sqrt(2/pi) (1 + 3 * 0.044715 z^2).
// Where s saturates at 0 or 1 the second term is 0 (written out so that 0 * inf never makes a NaN).
template <typename T>
SAE_HOST_DEVICE inline T gelu_new_derivative(T z) {
  const T s = T(1) / (T(1) + math_exp(T(-2) * gelu_new_u(z)));
  const T s_slope = s * (T(1) - s);
  if (s_slope == T(0)) return s;
  return s + T(2) * z * s_slope * T(0.7978845608028654) * (T(1) + T(3) * T(0.044715) * (z * z));
}

// The exact GELU (torch.nn.functional.gelu, approximate='none'; GPT-NeoX's "gelu"):
//   gelu(z) = 0.5 z (1 + erf(z / sqrt(2))),  d/dz = Phi(z) + z phi(z), phi(z) = exp(-z^2 / 2) / sqrt(2 pi).
template <typename T>
SAE_HOST_DEVICE inline T gelu_value(T z) {
  return T(0.5) * z * (T(1) + math_erf(z * T(0.7071067811865476)));
}
template <typename T>
SAE_HOST_DEVICE inline T gelu_derivative(T z) {
  const T cdf = T(0.5) * (T(1) + math_erf(z * T(0.7071067811865476)));
  const T density = math_exp(T(-0.5) * z * z) * T(0.3989422804014327);
  if (density == T(0)) return cdf;  // the tails (no 0 * inf)
  return cdf + z * density;
}

// SwiGLU's gate, silu(z) = z sigmoid(z) = z / (1 + exp(-z)) (torch.nn.functional.silu), and its
// derivative s (1 + z (1 - s)), s = sigmoid(z).
template <typename T>
SAE_HOST_DEVICE inline T silu_value(T z) {
  return z / (T(1) + math_exp(-z));
}
template <typename T>
SAE_HOST_DEVICE inline T silu_derivative(T z) {
  const T s = T(1) / (T(1) + math_exp(-z));
  return s * (T(1) + z * (T(1) - s));
}

// The gate's activation of a gated MLP (tensor/op_list.h GluActivation) and its derivative.
template <typename T>
SAE_HOST_DEVICE inline T glu_gate(GluActivation act, T z) {
  return act == GluActivation::silu ? silu_value(z) : gelu_new_value(z);
}
template <typename T>
SAE_HOST_DEVICE inline T glu_gate_derivative(GluActivation act, T z) {
  return act == GluActivation::silu ? silu_derivative(z) : gelu_new_derivative(z);
}

// out = op(x). step(x) = x > 0 ? 1 : 0 (the ReLU derivative), sign(x) in {-1, 0, 1}; gelu_new above.
template <typename T>
SAE_HOST_DEVICE inline T apply_unary(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::square: return x * x;
    case UnaryOp::sqrt: return math_sqrt(x);
    case UnaryOp::abs: return math_abs(x);
    case UnaryOp::relu: return x > T(0) ? x : T(0);
    case UnaryOp::step: return x > T(0) ? T(1) : T(0);
    case UnaryOp::sign: return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
    case UnaryOp::exp: return math_exp(x);
    case UnaryOp::log: return math_log(x);
    case UnaryOp::gelu_new: return gelu_new_value(x);
    case UnaryOp::gelu_new_grad: return gelu_new_derivative(x);
    case UnaryOp::gelu: return gelu_value(x);
    case UnaryOp::gelu_grad: return gelu_derivative(x);
    default: return x;
  }
}

// out = op(a, b); comparisons give 1 or 0.
template <typename T>
SAE_HOST_DEVICE inline T apply_binary(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
    case BinaryOp::maximum: return a > b ? a : b;
    case BinaryOp::minimum: return a < b ? a : b;
    case BinaryOp::gt: return a > b ? T(1) : T(0);
    case BinaryOp::ge: return a >= b ? T(1) : T(0);
    case BinaryOp::lt: return a < b ? T(1) : T(0);
    case BinaryOp::le: return a <= b ? T(1) : T(0);
    case BinaryOp::eq: return a == b ? T(1) : T(0);
    default: return a;
  }
}

}  // namespace sae
