// The op list of the kernels that the architecture units share (sae/arch): each family with a CPU
// kernel (cpu_<family>_kernels.cpp) and a CUDA kernel (cuda_<family>_kernels.cu) for every entry:
//   sparse      f's entries listed by feature and by token, the decoder product from them, and the
//               backward kernels with Adam fused in
//   selection   TopK's and BatchTopK's selections straight into by-token lists
//   decoder     rows scaled into a matrix, the unit-norm decoder's projection and normalisation
//   statistics  what each feature fires on, gathered while training (sae/train/feature_stats.h),
//               and each latent's clock of tokens since it last fired (dead latents, AuxK)
// A unit's own kernels (standard's ReLU passes, JumpReLU's, Gated's) have their own list beside the
// unit. Like the generic op list (tensor/op_list.h) each backend builds its table from this list
// (cpu_kernels.cpp, cuda_kernels.cu), so a missing kernel stops the compile; the front-end
// (sae_ops.h) checks shapes, dtypes and devices and the kernels trust it. Outputs come first in
// every signature. Their references are the units' autograd references and brute force in the tests.
//
// Letters: N tokens, D input width, F features; "entries" are the (token, feature) pairs where f > 0.
#pragma once
#include <type_traits>

#include "sae/step/kernel_table.h"
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

// The top lists the candidates merge into (feature_stats_math.h FeatureTopListsView). The int64 arrays
// are tensors of 8-byte elements (F64 storage, read only as int64: the tensor library has no int64).
struct FeatureTopLists {
  Tensor value;                  // [F, K] f32, by rank
  Tensor key;                    // [F, K] int64, by rank
  Tensor slot;                   // [F, K] i32, by rank
  Tensor count;                  // [F] i32
  Tensor threshold;              // [F] f32
  Tensor story, position, step;  // [F, K] int64, by slot
  Tensor pending_row;            // [F, K] i32, by slot
  Tensor tokens;                 // [F, K, W] i32, by slot
  Tensor values;                 // [F, K, W] f32, by slot
  Tensor error;                  // [1] i32: kStats* bits of every merge so far (0: none)
};

// Where one batch's rows came from, for the merge: story and position [N] int64 (undefined: not
// known), the token ids around each row [N, W] i32; the batch's step; unknown_base - r is the dedup
// key of a row r of no known story.
struct FeatureStatsRows {
  Tensor story, position, tokens;
  int64_t step = 0;
  int64_t unknown_base = -1;
};

#define SAE_STEP_KERNELS(X)                                                                            \
  /* ---- sparse: only the entries of f, listed in a SparseFeatures (above). dpre [capacity] is       \
     indexed like the by-feature lists. ---- */                                                        \
  /* builds both lists of f [N,F]; col_count [F] holds each column's number of entries > 0. Entries    \
     past the last one are left alone. f may be bf16 (col_count and the lists float32: widened). */    \
  X(sparse_index, void(SparseFeatures & s, const Tensor& f, const Tensor& col_count))                   \
  /* x_hat [N,D] = f W_dec + b_dec from f's entries */                                                  \
  X(sparse_decode, void(Tensor & x_hat, const SparseFeatures& s, const Tensor& W_dec, const Tensor& b_dec)) \
  /* f [R,F]: f[r, cols[e]] = row_vals[e] for each entry e of the by-token lists' rows row0 + r,        \
     r = 0 .. R-1 (a row's entries have distinct features); every other cell is left as it is */        \
  X(sparse_scatter, void(Tensor & f, const SparseFeatures& s, int64_t row0))                             \
  /* decoder side of the backward, dx = grad_x_hat [N,D], n = norms [F] (of W_dec's rows),              \
     c = col_sum [F] (sum_t f[t,i]); for every entry e of feature i (by feature), t = rows[e]:          \
       dpre[e] = dx[t,:] . W_dec[i,:] + l1 n_i                 (dLoss/dpre where f > 0)                 \
       dW_dec[i,:] = sum_e vals[e] dx[t,:] + l1 (c_i / max(n_i, 1e-30)) W_dec[i,:]  -> W_dec            \
     Every value of W_dec.param is read before its row is updated. unit_norm: the row's gradient g      \
     loses its component along u_i = W_dec[i,:] / n_i first, g -= (g . u_i) u_i, and with Adam the     \
     updated row is then divided by its norm (a unit-norm decoder). */                                 \
  X(sparse_decoder_backward, void(Tensor & dpre, ParamUpdate & W_dec, const Tensor& grad_x_hat,        \
                                  const SparseFeatures& s, const Tensor& norms, const Tensor& col_sum,     \
                                  double l1, bool unit_norm))                                           \
  /* encoder side, x [N,D]: dW_enc[:,i] = sum_e dpre[e] x[rows[e],:] -> W_enc [D,F];                    \
     db_enc[i] = sum_e dpre[e] -> b_enc [F] */                                                          \
  X(sparse_encoder_backward, void(ParamUpdate & W_enc, ParamUpdate & b_enc, const Tensor& x,           \
                                  const SparseFeatures& s, const Tensor& dpre))                            \
  /* the by-feature lists (col_ptr, rows, vals) of the entries of the by-token lists, whose row_ptr     \
     has R+1 values for R rows (rows may stand for stacked batches); col_sum [F] and col_count [F]      \
     sum and count each feature's entries */                                                            \
  X(sparse_by_feature, void(SparseFeatures & s, Tensor & col_sum, Tensor & col_count))                   \
  /* ---- selection. Selections write by-token lists (row_ptr, cols, row_vals) of rows                \
     row0 .. row0+N-1 of s, the row's entries following row_ptr[row0] (set to 0 when row0 = 0); the    \
     caller guarantees the room. Ties go to the lower index. ---- */                                   \
  /* in each row of P = pre + bias (pre [N,F] = x W_enc, bias [F]), the k largest P among the allowed \
     features (allowed [F] 0/1, or undefined: all), keeping those with P > 0, in feature order */       \
  X(topk_select, void(SparseFeatures & s, const Tensor& pre, const Tensor& bias, const Tensor& allowed, \
                      int64_t k, int64_t row0))                                                         \
  /* rows 0 .. N-1: the `total` largest relu(P) of the whole batch (ties to the lower row-major         \
     index), keeping those > 0 */                                                                        \
  X(batchtopk_select, void(SparseFeatures & s, const Tensor& pre, const Tensor& bias, int64_t total))    \
  /* ---- decoder ---- */                                                                              \
  /* out[i,:] += row_scale[i] * x[i,:] for 2-D out and x, row_scale [rows] */                          \
  X(add_scaled_rows, void(Tensor & out, const Tensor& x, const Tensor& row_scale))                      \
  /* unit-norm decoder, dense path: grad[i,:] -= (grad[i,:] . u_i) u_i with u_i = W[i,:] / norms[i] */   \
  X(decoder_project, void(Tensor & grad, const Tensor& W, const Tensor& norms))                          \
  /* W[i,:] /= ||W[i,:]|| (norm summed in double; zero rows stay zero) */                                \
  X(decoder_normalize, void(Tensor & W))                                                                 \
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
  /* merges each feature's candidates into its top list (merge_into_top_list, one owner per feature),  \
     looking up the context values of new entries in f [N,F] */                                      \
  X(feature_stats_merge, void(FeatureTopLists & lists, const FeatureCandidates& candidates,            \
                              const FeatureStatsRows& rows, const Tensor& f))                           \
  /* the same, the values looked up in the by-feature lists of s (rows < n) */                         \
  X(feature_stats_merge_sparse, void(FeatureTopLists & lists, const FeatureCandidates& candidates,     \
                                     const FeatureStatsRows& rows, const SparseFeatures& s, int64_t n))   \
  /* clock [F] f64 (tokens since each latent last fired, exact integers): 0 where counts [F] > 0,      \
     else clock + tokens; dead [F] (counts' dtype; may be undefined) = 1 where the new clock >=        \
     dead_tokens, else 0 */                                                                            \
  X(latent_clock, void(Tensor & clock, Tensor & dead, const Tensor& counts, double tokens, double dead_tokens))

struct SaeKernelTable {
  SAE_STEP_KERNELS(SAE_KERNEL_SLOT)
};

const SaeKernelTable& sae_cpu_kernels();
const SaeKernelTable& sae_cuda_kernels();  // only in CUDA builds
const SaeKernelTable& sae_kernels_for(Device device);  // throws for CUDA in a build without it

}  // namespace sae
