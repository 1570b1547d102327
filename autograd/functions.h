// Differentiable ops on Variables. Each records a Node whose backward formula is written with
// tensor ops (tensor/ops.h), so it runs on every device. Broadcasting inputs get their gradient
// summed back to their own shape (sum_to).
#pragma once
#include "autograd/variable.h"
#include "tensor/op_list.h"

namespace sae::ag {

Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable div(const Variable& a, const Variable& b);
Variable neg(const Variable& x);
Variable square(const Variable& x);
Variable sqrt(const Variable& x);
Variable abs(const Variable& x);
Variable relu(const Variable& x);
Variable exp(const Variable& x);
Variable log(const Variable& x);
Variable affine(const Variable& x, double scale, double shift);  // scale * x + shift
Variable where(const Tensor& cond, const Variable& a, const Variable& b);  // cond != 0 ? a : b

Variable sum(const Variable& x);                                    // all elements -> [1]
Variable sum(const Variable& x, int axis, bool keepdim = false);
Variable mean(const Variable& x);
Variable mean(const Variable& x, int axis, bool keepdim = false);
Variable norm2(const Variable& x, int axis, bool keepdim = false);  // L2 norm along axis

Variable matmul(const Variable& a, const Variable& b, bool trans_a = false, bool trans_b = false);
Variable transpose(const Variable& x);
Variable reshape(const Variable& x, const Shape& shape);

// Transformer ops (tensor/ops.h has the exact definitions).
Variable embedding(const Variable& table, const Tensor& ids);  // rows of table [V, D] at int32 ids [N]
Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps);  // last dim
Variable gelu_new(const Variable& x);
Variable gelu(const Variable& x);  // the exact (erf) GELU
Variable softmax(const Variable& x);  // last dim
Variable batched_matmul(const Variable& a, const Variable& b, bool trans_a = false, bool trans_b = false);
// Masked scores are -inf: follow with softmax (their gradient is 0).
Variable attention_mask(const Variable& scores, int64_t window);
Variable swap_axes01(const Variable& x);  // [A, B, C] -> [B, A, C]
// Rotary position embedding of x [B, T, D] (tensor/ops.h rotary); the tables cos, sin [T, R] are constants.
Variable rotary(const Variable& x, const Tensor& cos, const Tensor& sin);
Variable rms_norm(const Variable& x, const Variable& weight, double eps);  // last dim
Variable glu(const Variable& x, GluActivation act);  // x [N, 2F] (gate, up) -> act(gate) * up [N, F]
Variable soft_cap(const Variable& x, double cap);    // cap * tanh(x / cap)

}  // namespace sae::ag

namespace sae {
Variable operator+(const Variable& a, const Variable& b);
Variable operator-(const Variable& a, const Variable& b);
Variable operator*(const Variable& a, const Variable& b);
Variable operator/(const Variable& a, const Variable& b);
Variable operator-(const Variable& x);
Variable operator*(const Variable& x, double s);
Variable operator*(double s, const Variable& x);
}  // namespace sae
