// The SAE step's own op list: the fused kernels of the training step (sae_step.h), with a CPU
// kernel (cpu_kernels.cpp) and a CUDA kernel (cuda_kernels.cu) for every entry. Like the generic op
// list (tensor/op_list.h) each backend builds its table from this list, so a missing kernel stops
// the compile; the front-end (sae_ops.h) checks shapes, dtypes and devices and the kernels trust it.
// Outputs come first in every signature. The autograd model (sae/model.h) is their reference.
//
// Letters: N tokens, D input width, F features; "entries" are the (token, feature) pairs where f > 0.
#pragma once
#include <type_traits>

#include "tensor/adam_math.h"
#include "tensor/tensor.h"

namespace sae {

// A parameter of the fused sparse backward kernels and where its gradient goes. Gradient mode
// (adam false): the kernel writes the gradient into `grad` (param is only read). Adam mode: the
// kernel applies one torch.optim.Adam step (tensor/adam_math.h, with `scalars`) to `param`, `m`
// and `v` as soon as each gradient value is known, so the gradient is never stored (grad may be
// undefined). Tensors are handles: these share storage with the caller's.
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

#define SAE_STEP_KERNELS(X)                                                                            \
  /* f [N,F] holds x W_enc on entry; becomes relu(f + bias). col_sum[j] = sum_t f[t,j],                 \
     col_count[j] = number of t with f[t,j] > 0 (both [F]) */                                          \
  X(encoder_activate, void(Tensor & f, const Tensor& bias, Tensor& col_sum, Tensor& col_count))         \
  /* grad [N,F] holds dLoss/df on entry; becomes f > 0 ? grad + row_add : 0 (dLoss/dpre).               \
     col_sum[j] = sum_t of the result (dLoss/db_enc) */                                                \
  X(encoder_backward, void(Tensor & grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum))      \
  /* out[i,:] += row_scale[i] * x[i,:] for 2-D out and x, row_scale [rows] */                          \
  X(add_scaled_rows, void(Tensor & out, const Tensor& x, const Tensor& row_scale))                      \
  /* ---- the sparse path: only the entries of f, listed in a SparseFeatures (above). dpre           \
     [capacity] is indexed like the by-feature lists. ---- */                                          \
  /* builds both lists of f [N,F]; col_count [F] holds each column's number of entries > 0             \
     (encoder_activate's counts). Entries past the last one are left alone. */                         \
  X(sparse_index, void(SparseFeatures & s, const Tensor& f, const Tensor& col_count))                   \
  /* x_hat [N,D] = f W_dec + b_dec from f's entries */                                                  \
  X(sparse_decode, void(Tensor & x_hat, const SparseFeatures& s, const Tensor& W_dec, const Tensor& b_dec)) \
  /* decoder side of the backward, dx = grad_x_hat [N,D], n = norms [F] (of W_dec's rows),              \
     c = col_sum [F] (sum_t f[t,i]); for every entry e of feature i (by feature), t = rows[e]:          \
       dpre[e] = dx[t,:] . W_dec[i,:] + l1 n_i                 (dLoss/dpre where f > 0)                 \
       dW_dec[i,:] = sum_e vals[e] dx[t,:] + l1 (c_i / max(n_i, 1e-30)) W_dec[i,:]  -> W_dec            \
     Every value of W_dec.param is read before its row is updated. */                                   \
  X(sparse_decoder_backward, void(Tensor & dpre, ParamUpdate & W_dec, const Tensor& grad_x_hat,        \
                                  const SparseFeatures& s, const Tensor& norms, const Tensor& col_sum,     \
                                  double l1))                                                           \
  /* encoder side, x [N,D]: dW_enc[:,i] = sum_e dpre[e] x[rows[e],:] -> W_enc [D,F];                    \
     db_enc[i] = sum_e dpre[e] -> b_enc [F] */                                                          \
  X(sparse_encoder_backward, void(ParamUpdate & W_enc, ParamUpdate & b_enc, const Tensor& x,           \
                                  const SparseFeatures& s, const Tensor& dpre))

struct SaeKernelTable {
#define SAE_STEP_KERNEL_SLOT(name, signature) std::add_pointer_t<signature> name;
  SAE_STEP_KERNELS(SAE_STEP_KERNEL_SLOT)
#undef SAE_STEP_KERNEL_SLOT
};

const SaeKernelTable& sae_cpu_kernels();
const SaeKernelTable& sae_cuda_kernels();  // only in CUDA builds
const SaeKernelTable& sae_kernels_for(Device device);  // throws for CUDA in a build without it

}  // namespace sae
