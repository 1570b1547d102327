// The one list of tensor ops. Every op is declared here once; the CPU kernel table
// (cpu_kernels.cpp) and the CUDA kernel table (cuda_kernels.cu) register a kernel for every entry,
// and tests/test_ops.cpp checks that both tables are complete.
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

#include "tensor/tensor.h"

namespace sae {

// Element-wise unary ops: out[i] = op(x[i]).
//   step(x) = x > 0 ? 1 : 0 (the ReLU derivative), sign(x) in {-1, 0, 1}.
#define SAE_UNARY_OPS(X) X(neg) X(square) X(sqrt) X(abs) X(relu) X(step) X(sign) X(exp) X(log)

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

// Broadcasting plan for binary ops, with every shape left-padded to 4 dims. A stride of 0 repeats
// that input along the dimension.
struct Broadcast {
  std::array<int64_t, 4> out_dims{};
  std::array<int64_t, 4> a_strides{};
  std::array<int64_t, 4> b_strides{};
  bool same_shape = false;  // a, b and out have one shape: a flat loop will do
};

// The scalars of one torch.optim.Adam step (single-tensor form, bias-corrected).
struct AdamScalars {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;  // 1 on the first step
};

// A parameter of the fused sparse backward kernels and where its gradient goes. Gradient mode
// (adam false): the kernel writes the gradient into `grad` (param is only read). Adam mode: the
// kernel applies one torch.optim.Adam step (the adam_step formula with `scalars`) to `param`,
// `m` and `v` as soon as each gradient value is known, so the gradient is never stored (grad
// may be undefined). Tensors are handles: these share storage with the caller's.
struct ParamUpdate {
  Tensor param, grad, m, v;
  bool adam = false;
  AdamScalars scalars;
};

// The entries of f [N, F] that are > 0 (the active features), listed two ways by sparse_index:
//   by feature (CSC): feature i owns entries e in [col_ptr[i], col_ptr[i+1]), with tokens rows[e]
//                     in increasing order and values vals[e] = f[rows[e], i];
//   by token (CSR):   token t owns entries k in [row_ptr[t], row_ptr[t+1]), with features cols[k]
//                     in increasing order and values row_vals[k] = f[t, cols[k]].
// Index tensors are int32; the four entry lists have room for `capacity` entries (their numel).
struct SparseFeatures {
  Tensor col_ptr, rows, vals;      // [F+1], [capacity], [capacity]
  Tensor row_ptr, cols, row_vals;  // [N+1], [capacity], [capacity]
};

// The kernel table: name and signature of every kernel.
#define SAE_KERNELS(X)                                                                             \
  X(fill, void(Tensor & out, double value))                                                       \
  X(copy, void(Tensor & out, const Tensor& src)) /* same device; converts f32 <-> f64 */           \
  X(unary, void(UnaryOp op, Tensor & out, const Tensor& x))                                       \
  X(binary, void(BinaryOp op, Tensor & out, const Tensor& a, const Tensor& b, const Broadcast& plan)) \
  X(affine, void(Tensor & out, const Tensor& x, double scale, double shift)) /* scale*x+shift */   \
  X(where, void(Tensor & out, const Tensor& cond, const Tensor& a, const Tensor& b))              \
  X(reduce_all, void(ReduceOp op, Tensor & out, const Tensor& x))                                 \
  /* x viewed as [outer, len, inner], reduced over len into out [outer, inner] */                  \
  X(reduce_axis, void(ReduceOp op, Tensor & out, const Tensor& x, int64_t outer, int64_t len,      \
                      int64_t inner))                                                              \
  /* out = alpha * op(a) op(b) + beta * out, 2-D, row-major */                                     \
  X(matmul, void(Tensor & out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,       \
                 double alpha, double beta))                                                       \
  X(transpose, void(Tensor & out, const Tensor& x)) /* 2-D */                                      \
  /* one fused torch.optim.Adam step, in place on param, m and v */                                \
  X(adam_step, void(Tensor & param, Tensor & m, Tensor & v, const Tensor& grad, const AdamScalars& s))     \
  /* ---- SAE fused kernels (sae/sae_step.cpp); the autograd path is their reference ---- */        \
  /* f [N,F] holds x W_enc on entry; becomes relu(f + bias). col_sum[j] = sum_t f[t,j],             \
     col_count[j] = number of t with f[t,j] > 0 (both [F]) */                                      \
  X(encoder_activate, void(Tensor & f, const Tensor& bias, Tensor& col_sum, Tensor& col_count))     \
  /* grad [N,F] holds dLoss/df on entry; becomes f > 0 ? grad + row_add : 0 (dLoss/dpre).           \
     col_sum[j] = sum_t of the result (dLoss/db_enc) */                                            \
  X(encoder_backward, void(Tensor & grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum))  \
  /* out[i,:] += row_scale[i] * x[i,:] for 2-D out and x, row_scale [rows] */                      \
  X(add_scaled_rows, void(Tensor & out, const Tensor& x, const Tensor& row_scale))                  \
  /* ---- sparse SAE kernels (sae/sae_step.cpp, sparse path): only the entries of f that are > 0,   \
     listed in a SparseFeatures (above). dpre [capacity] is indexed like the by-feature lists. ---- */\
  /* builds both lists of f [N,F]; col_count [F] holds each column's number of entries > 0          \
     (encoder_activate's counts). Entries past the last one are left alone. */                      \
  X(sparse_index, void(SparseFeatures & s, const Tensor& f, const Tensor& col_count))               \
  /* x_hat [N,D] = f W_dec + b_dec from f's entries > 0 */                                          \
  X(sparse_decode, void(Tensor & x_hat, const SparseFeatures& s, const Tensor& W_dec, const Tensor& b_dec)) \
  /* decoder side of the backward, dx = grad_x_hat [N,D], n = norms [F] (of W_dec's rows),          \
     c = col_sum [F] (sum_t f[t,i]); for every entry e of feature i (by feature), t = rows[e]:      \
       dpre[e] = dx[t,:] . W_dec[i,:] + l1 n_i                 (dLoss/dpre where f > 0)             \
       dW_dec[i,:] = sum_e vals[e] dx[t,:] + l1 (c_i / max(n_i, 1e-30)) W_dec[i,:]  -> W_dec        \
     Every value of W_dec.param is read before its row is updated. */                               \
  X(sparse_decoder_backward, void(Tensor & dpre, ParamUpdate & W_dec, const Tensor& grad_x_hat,    \
                                  const SparseFeatures& s, const Tensor& norms, const Tensor& col_sum, \
                                  double l1))                                                       \
  /* encoder side, x [N,D]: dW_enc[:,i] = sum_e dpre[e] x[rows[e],:] -> W_enc [D,F];                \
     db_enc[i] = sum_e dpre[e] -> b_enc [F] */                                                      \
  X(sparse_encoder_backward, void(ParamUpdate & W_enc, ParamUpdate & b_enc, const Tensor& x,       \
                                  const SparseFeatures& s, const Tensor& dpre))

struct KernelTable {
#define SAE_KERNEL_SLOT(name, signature) std::add_pointer_t<signature> name = nullptr;
  SAE_KERNELS(SAE_KERNEL_SLOT)
#undef SAE_KERNEL_SLOT
};

const KernelTable& cpu_kernels();
const KernelTable& kernels_for(Device device);  // throws when that device is not built
// Names of the kernels a table lacks (empty when complete).
std::string missing_kernels(const KernelTable& table);

}  // namespace sae
