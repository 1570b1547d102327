// The one list of generic tensor ops. Every op is declared here once; the CPU kernel table
// (tensor/cpu/kernels.cpp) and the CUDA kernel table (tensor/cuda/kernels.cu) are built from this
// list, so a backend that lacks a kernel does not compile. (The SAE step's own fused kernels have
// their own list beside them: sae/step/sae_kernels.h.)
//
// Adding an op touches: this list, one CPU kernel, one CUDA kernel, the front-end in ops.cpp,
// its gradient in autograd/functions.cpp (if differentiable and not composed from other ops),
// and one test row.
//
// Kernels are dumb: the front-end (ops.cpp) has already checked shapes, dtypes and devices and
// allocated the output. Outputs come first in every signature.
#pragma once
#include <array>
#include <cstdint>
#include <type_traits>

#include "tensor/adam_math.h"
#include "tensor/tensor.h"

namespace sae {

// Element-wise unary ops: out[i] = op(x[i]).
//   step(x) = x > 0 ? 1 : 0 (the ReLU derivative), sign(x) in {-1, 0, 1}.
//   gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (GPT-2's tanh GELU), and
//   gelu_new_grad(x) its derivative; gelu(x) = 0.5 x (1 + erf(x / sqrt(2))) (the exact GELU of
//   torch.nn.functional.gelu, GPT-NeoX's "gelu") and gelu_grad(x) its derivative (element_math.h
//   has the formulas).
#define SAE_UNARY_OPS(X)                                                                           \
  X(neg) X(square) X(sqrt) X(abs) X(relu) X(step) X(sign) X(exp) X(log) X(gelu_new) X(gelu_new_grad) \
  X(gelu) X(gelu_grad)

// Element-wise binary ops with broadcasting: out[i] = op(a[i], b[i]).
// Comparisons return 1 or 0 in the inputs' dtype.
#define SAE_BINARY_OPS(X) \
  X(add) X(sub) X(mul) X(div) X(maximum) X(minimum) X(gt) X(ge) X(lt) X(le) X(eq)

// Reductions, over all elements or one axis. Accumulation is in float64 on CPU.
#define SAE_REDUCE_OPS(X) X(sum) X(mean) X(max) X(min) X(sum_squares) X(norm2) X(count_nonzero)

#define SAE_ENUM_ENTRY(name) name,
enum class UnaryOp { SAE_UNARY_OPS(SAE_ENUM_ENTRY) count };
enum class BinaryOp { SAE_BINARY_OPS(SAE_ENUM_ENTRY) count };
enum class ReduceOp { SAE_REDUCE_OPS(SAE_ENUM_ENTRY) count };
#undef SAE_ENUM_ENTRY

const char* op_name(UnaryOp op);
const char* op_name(BinaryOp op);
const char* op_name(ReduceOp op);

// The gate's activation of a gated MLP (glu in SAE_TRANSFORMER_KERNELS): SwiGLU's silu(z) = z / (1 +
// exp(-z)) (Llama, Qwen 2, Mistral) or GeGLU's tanh GELU, gelu_new above (Gemma's gelu_pytorch_tanh).
enum class GluActivation { silu, gelu_tanh };
const char* glu_activation_name(GluActivation act);

// Broadcasting plan for binary ops, with every shape left-padded to 4 dims. A stride of 0 repeats
// that input along the dimension.
struct Broadcast {
  std::array<int64_t, 4> out_dims{};
  std::array<int64_t, 4> a_strides{};
  std::array<int64_t, 4> b_strides{};
  bool same_shape = false;  // a, b and out have one shape: a flat loop will do
};

// The kernel table: name and signature of every kernel. A backend defines one function per entry,
// named <name>_cpu or <name>_cuda, and fills its table from this same list,
//   #define SAE_CPU_ENTRY(name, signature) name##_cpu,
//   static const KernelTable table{SAE_KERNELS(SAE_CPU_ENTRY)};
// so a missing kernel or a wrong signature stops the compile.
#define SAE_KERNELS(X)                                                                             \
  X(fill, void(Tensor & out, double value))                                                       \
  X(copy, void(Tensor & out, const Tensor& src)) /* same device; converts between f32 f64 bf16 f16 */ \
  X(unary, void(UnaryOp op, Tensor & out, const Tensor& x))                                       \
  X(binary, void(BinaryOp op, Tensor & out, const Tensor& a, const Tensor& b, const Broadcast& plan)) \
  X(affine, void(Tensor & out, const Tensor& x, double scale, double shift)) /* scale*x+shift */   \
  X(where, void(Tensor & out, const Tensor& cond, const Tensor& a, const Tensor& b))              \
  X(reduce_all, void(ReduceOp op, Tensor & out, const Tensor& x))                                 \
  /* x viewed as [outer, len, inner], reduced over len into out [outer, inner] */                  \
  X(reduce_axis, void(ReduceOp op, Tensor & out, const Tensor& x, int64_t outer, int64_t len,      \
                      int64_t inner))                                                              \
  /* out = alpha * op(a) op(b) + beta * out, 2-D, row-major; b may be bf16 / f16 with a and out    \
     float32 (a model's weights as stored: widened a tile of rows or columns at a time) */          \
  X(matmul, void(Tensor & out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,       \
                 double alpha, double beta))                                                       \
  X(transpose, void(Tensor & out, const Tensor& x)) /* 2-D */                                      \
  /* one fused torch.optim.Adam step (tensor/adam_math.h), in place on param, m and v */           \
  X(adam_step, void(Tensor & param, Tensor & m, Tensor & v, const Tensor& grad, const AdamScalars& s)) \
  SAE_TRANSFORMER_KERNELS(X)

// The ops a transformer needs (CPU: tensor/cpu/transformer_kernels.cpp, CUDA:
// tensor/cuda/transformer_kernels.cu). Letters: N rows (tokens), D row width, V table rows
// (vocabulary), B batch (heads), Tq queries, Tk keys.
#define SAE_TRANSFORMER_KERNELS(X)                                                                 \
  /* out [N, D] = table [V, D] rows ids [N] (int32, each in [0, V): checked by the front-end); a     \
     bf16 / f16 table gives float32 rows */                                                        \
  X(embedding, void(Tensor & out, const Tensor& table, const Tensor& ids))                         \
  /* table_grad[ids[n]] += grad[n] for n = 0..N-1 in order (the gather's backward) */               \
  X(embedding_backward, void(Tensor & table_grad, const Tensor& grad, const Tensor& ids))          \
  /* each row of x [N, D]: out = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps),    \
     var biased; mean and rstd [N] are written for the backward */                                 \
  X(layer_norm, void(Tensor & out, Tensor & mean, Tensor & rstd, const Tensor& x, const Tensor& weight, \
                     const Tensor& bias, double eps))                                              \
  /* each row of x [N, D]: out = exp(x - max) / sum exp(x - max); -inf entries give exactly 0 */   \
  X(softmax, void(Tensor & out, const Tensor& x))                                                  \
  /* out[b] = alpha * op(a[b]) op(b[b]) + beta * out[b] for every b of the leading dim, 3-D */      \
  X(batched_matmul, void(Tensor & out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, \
                         double alpha, double beta))                                               \
  /* scores [B, Tq, Tk], query r at position p = Tk - Tq + r: out = scores where key j has          \
     0 <= p - j (causal) and, when window > 0, p - j < window; masked_value elsewhere */           \
  X(attention_mask, void(Tensor & out, const Tensor& scores, int64_t window, double masked_value))  \
  /* out [B, A, C] = x [A, B, C] with the two leading axes swapped (heads in and out of columns) */ \
  X(swap_axes01, void(Tensor & out, const Tensor& x))                                              \
  /* rotary position embedding (GPT-NeoX's rotate-half form) of x [B, T, D] with cos, sin [T, R],  \
     2R <= D: for j < R, out[j] = x[j] cos[t, j] - x[j + R] sin[t, j] and                          \
     out[j + R] = x[j + R] cos[t, j] + x[j] sin[t, j]; columns 2R.. are copied. out may be x */   \
  X(rotary, void(Tensor & out, const Tensor& x, const Tensor& cos, const Tensor& sin))              \
  /* each row of x [N, D]: out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps) (RMSNorm);     \
     rstd [N] is written for the backward; out may be x */                                         \
  X(rms_norm, void(Tensor & out, Tensor & rstd, const Tensor& x, const Tensor& weight, double eps))  \
  /* x [N, 2F] holds a gate [N, F] then an up projection [N, F]: out [N, F] = act(gate) * up */     \
  X(glu, void(Tensor & out, const Tensor& x, GluActivation act))                                  \
  /* its backward: grad_x [N, 2F] = [grad * up * act'(gate), grad * act(gate)] */                  \
  X(glu_backward, void(Tensor & grad_x, const Tensor& x, const Tensor& grad, GluActivation act))   \
  /* out = cap * tanh(x / cap), cap > 0 (Gemma 2's soft-capping of scores and logits); out may be x */ \
  X(soft_cap, void(Tensor & out, const Tensor& x, double cap))

struct KernelTable {
#define SAE_OP_KERNEL_SLOT(name, signature) std::add_pointer_t<signature> name;
  SAE_KERNELS(SAE_OP_KERNEL_SLOT)
#undef SAE_OP_KERNEL_SLOT
};

const KernelTable& cpu_kernels();
const KernelTable& kernels_for(Device device);  // throws when that device is not built

}  // namespace sae
