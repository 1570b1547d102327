// Tensor op front-end: checks shapes, dtypes and devices, allocates outputs and dispatches to the
// kernel of the tensor's device (op_list.h). Every error throws sae::Error naming the op and the
// operands. Functions ending in _ write into an existing tensor (no allocation).
#pragma once
#include "tensor/op_list.h"
#include "tensor/tensor.h"

namespace sae {

// ---- in place / into existing outputs ----
void fill_(Tensor& out, double value);
void copy_(Tensor& out, const Tensor& src);  // same shape and device; converts dtype
void add_(Tensor& out, const Tensor& x);     // out += x (gradient accumulation)
void unary_(UnaryOp op, Tensor& out, const Tensor& x);
void binary_(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b);
void affine_(Tensor& out, const Tensor& x, double scale, double shift);
// out = alpha * op(a) op(b) + beta * out; out must already have the result's shape.
void matmul_(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha = 1.0,
             double beta = 0.0);
void reduce_axis_(ReduceOp op, Tensor& out, const Tensor& x, int axis);  // out: x's shape without axis
void reduce_all_(ReduceOp op, Tensor& out, const Tensor& x);             // out: one element
void adam_step_(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, const AdamScalars& s);

// ---- element-wise ----
Tensor unary(UnaryOp op, const Tensor& x);
#define SAE_DECLARE_UNARY(name) Tensor name(const Tensor& x);
SAE_UNARY_OPS(SAE_DECLARE_UNARY)
#undef SAE_DECLARE_UNARY

// Broadcasting follows NumPy: shapes align at the right; each dim equal or 1.
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
#define SAE_DECLARE_BINARY(name) Tensor name(const Tensor& a, const Tensor& b);
SAE_BINARY_OPS(SAE_DECLARE_BINARY)
#undef SAE_DECLARE_BINARY
Shape broadcast_shape(const Shape& a, const Shape& b, const char* op);

Tensor affine(const Tensor& x, double scale, double shift);  // scale * x + shift
Tensor add_scalar(const Tensor& x, double s);
Tensor mul_scalar(const Tensor& x, double s);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);  // cond != 0 ? a : b

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& x);
Tensor operator*(const Tensor& x, double s);
Tensor operator*(double s, const Tensor& x);
Tensor operator+(const Tensor& x, double s);

// ---- reductions ----
Tensor reduce(ReduceOp op, const Tensor& x);                                // shape [1]
Tensor reduce(ReduceOp op, const Tensor& x, int axis, bool keepdim = false);  // axis may be negative
Tensor sum(const Tensor& x);
Tensor sum(const Tensor& x, int axis, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, int axis, bool keepdim = false);
Tensor norm2(const Tensor& x, int axis, bool keepdim = false);  // L2 norm along axis
// Sums a broadcast result back down to `shape` (the gradient of broadcasting).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- linear algebra and layout ----
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
Tensor transpose(const Tensor& x);  // 2-D

}  // namespace sae
