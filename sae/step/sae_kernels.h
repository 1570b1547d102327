// The SAE step's own op list: the fused kernels of the training step (sae_step.h), with a CPU
// kernel (cpu_kernels.cpp) and a CUDA kernel (cuda_kernels.cu) for every entry. Like the generic op
// list (tensor/op_list.h) each backend builds its table from this list, so a missing kernel stops
// the compile; the front-end (sae_ops.h) checks shapes, dtypes and devices and the kernels trust it.
// Outputs come first in every signature. The autograd model (sae/model.h) is their reference.
//
// Letters: N tokens, D input width, F features; "entries" are the (token, feature) pairs where f > 0.
// The entries after "the other architectures" serve sae/arch.h's TopK, BatchTopK, JumpReLU and Gated
// SAEs (arch_step.h); their reference is sae/arch_model.h. The "feature statistics" entries serve
// sae/train/feature_stats.h (what each feature fires on, gathered while training); their reference is
// a brute-force pass in the tests.
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

// Feature statistics (sae/train/feature_stats.h): per feature, the largest activations of one batch
// that beat the feature's threshold, at most one per group of rows, in decreasing order (ties: lower
// row first): values[i, 0 .. count[i]), with their rows and groups.
struct FeatureCandidates {
  Tensor values, rows, groups;  // [F, K]: the activation's dtype, i32, i32
  Tensor count;                 // [F] i32
};

// JumpReLU's per-run constants (sae/arch.h) with the step's sparsity coefficient lambda.
struct JumpReluConstants {
  bool tanh = false;           // penalty: false = step (L0), true = tanh + pre-activation loss
  bool ste_to_input = false;   // the straight-through estimators also feed P
  double lambda = 0.0;         // sparsity coefficient
  double pre_act = 0.0;        // lambda_P (tanh)
  double tanh_c = 4.0;         // c (tanh)
  double bandwidth = 0.001;    // epsilon of the rectangle kernel K(u) = 1[-1/2 < u < 1/2], u = (P - theta) / eps
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
     Every value of W_dec.param is read before its row is updated. unit_norm: the row's gradient g      \
     loses its component along u_i = W_dec[i,:] / n_i first, g -= (g . u_i) u_i, and with Adam the     \
     updated row is then divided by its norm (the unit-norm decoder of sae/arch.h). */                  \
  X(sparse_decoder_backward, void(Tensor & dpre, ParamUpdate & W_dec, const Tensor& grad_x_hat,        \
                                  const SparseFeatures& s, const Tensor& norms, const Tensor& col_sum,     \
                                  double l1, bool unit_norm))                                           \
  /* encoder side, x [N,D]: dW_enc[:,i] = sum_e dpre[e] x[rows[e],:] -> W_enc [D,F];                    \
     db_enc[i] = sum_e dpre[e] -> b_enc [F] */                                                          \
  X(sparse_encoder_backward, void(ParamUpdate & W_enc, ParamUpdate & b_enc, const Tensor& x,           \
                                  const SparseFeatures& s, const Tensor& dpre))                            \
  /* ---- the other architectures. Selections write by-token lists (row_ptr, cols, row_vals) of     \
     rows row0 .. row0+N-1 of s, the row's entries following row_ptr[row0] (set to 0 when row0 = 0);  \
     the caller guarantees the room. Ties go to the lower index. ---- */                               \
  /* in each row of P = pre + bias (pre [N,F] = x W_enc, bias [F]), the k largest P among the allowed \
     features (allowed [F] 0/1, or undefined: all), keeping those with P > 0, in feature order */       \
  X(topk_select, void(SparseFeatures & s, const Tensor& pre, const Tensor& bias, const Tensor& allowed, \
                      int64_t k, int64_t row0))                                                         \
  /* rows 0 .. N-1: the `total` largest relu(P) of the whole batch (ties to the lower row-major         \
     index), keeping those > 0 */                                                                        \
  X(batchtopk_select, void(SparseFeatures & s, const Tensor& pre, const Tensor& bias, int64_t total))    \
  /* the by-feature lists (col_ptr, rows, vals) of the entries of the by-token lists, whose row_ptr     \
     has R+1 values for R rows (rows may stand for stacked batches); col_sum [F] and col_count [F]      \
     sum and count each feature's entries */                                                            \
  X(sparse_by_feature, void(SparseFeatures & s, Tensor & col_sum, Tensor & col_count))                   \
  /* unit-norm decoder, dense path: grad[i,:] -= (grad[i,:] . u_i) u_i with u_i = W[i,:] / norms[i] */   \
  X(decoder_project, void(Tensor & grad, const Tensor& W, const Tensor& norms))                          \
  /* W[i,:] /= ||W[i,:]|| (norm summed in double; zero rows stay zero) */                                \
  X(decoder_normalize, void(Tensor & W))                                                                 \
  /* JumpReLU forward: pre [N,F] holds x W_enc and becomes P = pre + bias; theta_i = exp(log_threshold_i); \
     f = P H(P - theta). col_count[i] = sum_t H; col_a[i] = sum_t H (step) or tanh(c f n_i) (tanh);     \
     col_b[i] = sum_t relu(theta_i - P) (tanh; 0 for step). norms [F] = ||W_dec[i,:]|| */                \
  X(jumprelu_forward, void(Tensor & f, Tensor & pre, const Tensor& bias, const Tensor& log_threshold,     \
                           const Tensor& norms, const JumpReluConstants& c, Tensor& col_count,            \
                           Tensor& col_a, Tensor& col_b))                                                 \
  /* JumpReLU backward (docs/architectures.md §2.3): grad [N,F] holds dx_hat W_dec^T on entry and       \
     becomes dL/dP; grad_bias[i] = sum_t dL/dP; grad_log_threshold[i] = theta_i dL/dtheta_i;             \
     decoder_scale[i] = the coefficient of u_i that the tanh and pre-activation terms add to            \
     dL/dW_dec[i,:] (0 for step). pre holds P (after jumprelu_forward) */                                \
  X(jumprelu_backward, void(Tensor & grad, const Tensor& pre, const Tensor& log_threshold,                \
                            const Tensor& norms, const JumpReluConstants& c, Tensor& grad_bias,           \
                            Tensor& grad_log_threshold, Tensor& decoder_scale))                           \
  /* Gated forward: pre [N,F] holds Q = x W_enc. f = H(Q + b_gate) relu(Q exp(r_mag) + b_mag),          \
     gate = relu(Q + b_gate); col_count[i] = sum_t (f > 0), col_gate[i] = sum_t gate */                 \
  X(gated_forward, void(Tensor & f, Tensor & gate, const Tensor& pre, const Tensor& b_gate,               \
                        const Tensor& b_mag, const Tensor& r_mag, Tensor& col_count, Tensor& col_gate))   \
  /* Gated backward: grad [N,F] holds dL/df (dx_hat W_dec^T) and becomes dL/dQ; grad_gate [N,F] holds   \
     the auxiliary loss's dL/dgate. With H = 1[pi_gate > 0], Hm = 1[pi_mag > 0]: g_mag = grad H Hm,     \
     g_gate = H (lambda n_i + grad_gate), dL/dQ = g_gate + g_mag exp(r_mag); grad_b_gate = sum_t        \
     g_gate, grad_b_mag = sum_t g_mag, grad_r_mag = exp(r_mag) sum_t g_mag Q */                          \
  X(gated_backward, void(Tensor & grad, const Tensor& grad_gate, const Tensor& pre, const Tensor& b_gate, \
                         const Tensor& b_mag, const Tensor& r_mag, const Tensor& norms, double lambda,     \
                         Tensor& grad_b_gate, Tensor& grad_b_mag, Tensor& grad_r_mag))                   \
  /* ---- feature statistics (sae/train/feature_stats.h; formulas in feature_stats_math.h). threshold  \
     [F] and group [N] (i32) are per feature and per row; a value v of feature i is a candidate when  \
     v > 0 and v > threshold[i]; out gets each feature's candidates (offer_candidate, in row order)    \
     and histogram [F, kHistogramBins] (f64) += 1 in histogram_bin(v) for every v > 0. ---- */        \
  /* from f [N,F] */                                                                                 \
  X(feature_stats_scan, void(FeatureCandidates & out, Tensor & histogram, const Tensor& f,              \
                             const Tensor& threshold, const Tensor& group))                             \
  /* from the by-feature lists of s, entries of rows < N only (AuxK's rows N.. are not features) */     \
  X(feature_stats_scan_sparse, void(FeatureCandidates & out, Tensor & histogram, const SparseFeatures& s, \
                                    int64_t rows, const Tensor& threshold, const Tensor& group))          \
  /* out[m] = f[rows[m], features[m]] (rows, features [M] i32; NaN for an index out of range) */        \
  X(feature_values_at, void(Tensor & out, const Tensor& f, const Tensor& rows, const Tensor& features))   \
  /* the same from the by-feature lists (0 where the entry is absent: f was 0 there) */                 \
  X(feature_values_at_sparse, void(Tensor & out, const SparseFeatures& s, int64_t rows_limit,            \
                                   const Tensor& rows, const Tensor& features))

struct SaeKernelTable {
#define SAE_STEP_KERNEL_SLOT(name, signature) std::add_pointer_t<signature> name;
  SAE_STEP_KERNELS(SAE_STEP_KERNEL_SLOT)
#undef SAE_STEP_KERNEL_SLOT
};

const SaeKernelTable& sae_cpu_kernels();
const SaeKernelTable& sae_cuda_kernels();  // only in CUDA builds
const SaeKernelTable& sae_kernels_for(Device device);  // throws for CUDA in a build without it

}  // namespace sae
