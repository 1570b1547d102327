// The element formulas of the element-wise ops (tensor/op_list.h), one copy for host and device:
// the CPU kernels (tensor/cpu) and the CUDA kernels (tensor/cuda) both call apply_unary and
// apply_binary, with the op known at compile time so the switch folds away.
#pragma once
#include "tensor/host_device.h"
#include "tensor/op_list.h"

namespace sae {

// out = op(x). step(x) = x > 0 ? 1 : 0 (the ReLU derivative), sign(x) in {-1, 0, 1}.
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
