// Tensor op front-end: checks shapes, dtypes and devices, allocates outputs and dispatches to the
// kernel of the tensor's device (op_list.h). Every error throws sae::Error naming the op and the
// operands. Functions ending in _ write into an existing tensor (no allocation).
#pragma once
#include <cmath>

#include "tensor/op_list.h"
#include "tensor/tensor.h"

namespace sae {

// ---- in place / into existing outputs ----
void fill_(Tensor& out, double value);
// Same shape and device; converts between f32, f64, bf16 and f16 (rounding to nearest even), or copies
// i32 to i32.
void copy_(Tensor& out, const Tensor& src);
void add_(Tensor& out, const Tensor& x);     // out += x (gradient accumulation)
void unary_(UnaryOp op, Tensor& out, const Tensor& x);
void binary_(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b);
void affine_(Tensor& out, const Tensor& x, double scale, double shift);
// out = alpha * op(a) op(b) + beta * out; out must already have the result's shape. a and b may be
// bf16 or f16 where the other operand is float32 or 16-bit and out is float32 or bf16 (weights kept
// as a model file stores them, activations kept in bf16 at --precision bf16): the result is the
// float32 product of the widened values (their inputs rounded per --precision, precision.h; bf16
// values are exact at every precision). A 16-bit b is widened a tile at a time. out may be bf16
// (beta 0): that float32 product rounded once to bfloat16, to nearest even.
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

// ---- transformer ops (SAE_TRANSFORMER_KERNELS in op_list.h) ----
// Letters: N rows (tokens), D row width, V table rows, B batch (heads), Tq queries, Tk keys.

// Rows of table [V, D] picked by ids (int32 [N], on the table's device): [N, D]. An id outside
// [0, V) throws Error naming it (ids on a GPU are copied to the host for this check). A bf16 or f16
// table gives float32 rows (out float32).
Tensor embedding(const Tensor& table, const Tensor& ids);
void embedding_(Tensor& out, const Tensor& table, const Tensor& ids);
// table_grad [V, D] += the rows of grad [N, D] at ids, in id order (accumulates).
void embedding_backward_(Tensor& table_grad, const Tensor& grad, const Tensor& ids);

// LayerNorm over the last dim (torch.nn.LayerNorm): (x - mean) / sqrt(var + eps) * weight + bias,
// var biased, weight and bias [D], eps >= 0. The _ form also writes mean and rstd = 1/sqrt(var + eps)
// (N = numel / D values each); out may be x.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
void layer_norm_(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& weight, const Tensor& bias,
                 double eps);

// Softmax over the last dim; -inf entries get probability 0 exactly (a row of only -inf gives NaN,
// as in PyTorch). out may be x.
Tensor softmax(const Tensor& x);
void softmax_(Tensor& out, const Tensor& x);

// 3-D operands [B, ., .]: out[b] = alpha * op(a[b]) op(b[b]) + beta * out[b]. out must not overlap a or b.
Tensor batched_matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
void batched_matmul_(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha = 1.0,
                     double beta = 0.0);

// Attention scores [B, Tq, Tk], the Tq queries being the last Tq of Tk positions (Tq == Tk without
// a cache): query position p sees key j iff j <= p (causal) and, for window > 0, p - j < window
// (GPT-Neo's local attention: exactly `window` keys, its own included). Every other score becomes
// masked_value; -inf makes its softmax probability exactly 0, which is what Hugging Face's
// finfo.min masking gives too (docs/gpt_neo.md section 4). out may be scores.
Tensor attention_mask(const Tensor& scores, int64_t window, double masked_value = -INFINITY);
void attention_mask_(Tensor& out, const Tensor& scores, int64_t window, double masked_value = -INFINITY);

// [A, B, C] -> [B, A, C] (e.g. [T, H, hd] tokens-by-heads to [H, T, hd] heads-by-tokens and back).
// out must not overlap x.
Tensor swap_axes01(const Tensor& x);
void swap_axes01_(Tensor& out, const Tensor& x);

// Rotary position embedding in GPT-NeoX's rotate-half form (Hugging Face's apply_rotary_pos_emb) on
// x [B, T, D] (heads, positions, head dims) with the angles' cos and sin [T, R] for the T positions,
// 2R <= D: for j < R, out[j] = x[j] cos[t, j] - x[j + R] sin[t, j], out[j + R] = x[j + R] cos[t, j]
// + x[j] sin[t, j]; columns 2R.. (not rotated) are copied. out may be x (in place).
Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin);
void rotary_(Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin);

// RMSNorm over the last dim (Llama's, and Gemma's with its weight 1 + w folded in):
// x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps), weight [D], eps >= 0 (sum of squares in double).
// The _ form also writes rstd (N = numel / D values); out may be x.
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);
void rms_norm_(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& weight, double eps);

// A gated MLP's activation: x [N, 2F] holds the gate projection then the up projection (one GEMM of
// the two weights stacked); out [N, F] = act(gate) * up (SwiGLU with silu, GeGLU with the tanh GELU).
// glu_backward_ gives the gradient with respect to x [N, 2F] from grad [N, F].
Tensor glu(const Tensor& x, GluActivation act);
void glu_(Tensor& out, const Tensor& x, GluActivation act);
void glu_backward_(Tensor& grad_x, const Tensor& x, const Tensor& grad, GluActivation act);

// Soft-capping (Gemma 2's attention scores and final logits): cap * tanh(x / cap), cap > 0. out may be x.
Tensor soft_cap(const Tensor& x, double cap);
void soft_cap_(Tensor& out, const Tensor& x, double cap);

// ---- host checks ----
// The index of the first NaN or +-inf among `count` float32 values on the host, or -1 (for the checks
// that refuse a non-finite weight, moment or output, each with its own message).
inline int64_t first_non_finite(const float* values, int64_t count) {
  for (int64_t k = 0; k < count; ++k)
    if (!std::isfinite(values[k])) return k;
  return -1;
}

}  // namespace sae
