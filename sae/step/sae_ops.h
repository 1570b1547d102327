// Front-end of the SAE step's kernels (sae_kernels.h): checks shapes, dtypes and devices, naming
// the op and the operands in every error, and dispatches to the kernel of the tensors' device.
// Every function writes into existing tensors (no allocation).
#pragma once
#include "sae/step/sae_kernels.h"

namespace sae {

// Front-end check shared with the units' kernels: m [N, F] and v [F] on one device and dtype.
void check_rows_and_column_vector(const char* op, const Tensor& m, const Tensor& v);
// The same for activations m, which may also be bf16 with a float32 v (kernels widen each value).
void check_activations_and_column_vector(const char* op, const Tensor& m, const Tensor& v);
// a has the shape, dtype and device of the activations m (float32, float64 or bf16).
void check_like_activations(const char* op, const Tensor& a, const Tensor& m);

void add_scaled_rows_(Tensor& out, const Tensor& x, const Tensor& row_scale);
// The sparse path. The caller guarantees that the entry lists and dpre have room for every entry of
// f that is > 0 (the checks here cannot count them without reading f).
void sparse_index_(SparseFeatures& s, const Tensor& f, const Tensor& col_count);
void sparse_decode_(Tensor& x_hat, const SparseFeatures& s, const Tensor& W_dec, const Tensor& b_dec);
// Only the by-token lists (row_ptr, cols, row_vals in f's dtype) are read.
void sparse_scatter_(Tensor& f, const SparseFeatures& s, int64_t row0);
void sparse_decoder_backward_(Tensor& dpre, ParamUpdate& W_dec, const Tensor& grad_x_hat, const SparseFeatures& s,
                              const Tensor& norms, const Tensor& col_sum, double l1, bool unit_norm = false);
void sparse_encoder_backward_(ParamUpdate& W_enc, ParamUpdate& b_enc, const Tensor& x, const SparseFeatures& s,
                              const Tensor& dpre);

// The selections (TopK, BatchTopK, AuxK). Selections write by-token lists into rows row0.. of s; the
// caller guarantees room for every entry (N k for topk_select, total for batchtopk_select). pre may
// be bf16 with a float32 bias: each value is widened, then the bias added in float32.
void topk_select_(SparseFeatures& s, const Tensor& pre, const Tensor& bias, const Tensor& allowed, int64_t k,
                  int64_t row0);
void batchtopk_select_(SparseFeatures& s, const Tensor& pre, const Tensor& bias, int64_t total);
void sparse_by_feature_(SparseFeatures& s, Tensor& col_sum, Tensor& col_count);
void decoder_project_(Tensor& grad, const Tensor& W, const Tensor& norms);
void decoder_normalize_(Tensor& W);

// Feature statistics (sae/train/feature_stats.h); defined in stats_ops.cpp. out's tensors are
// [F, K] (values in f's dtype, rows and groups i32) and count [F] i32; histogram [F, kHistogramBins]
// f64; threshold [F] in f's dtype; group [N] i32; all on one device.
void feature_stats_scan_(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                         const Tensor& group);
// `rows` = N: the by-feature lists' entries of rows >= N are skipped (AuxK's).
void feature_stats_scan_sparse_(FeatureCandidates& out, Tensor& histogram, const SparseFeatures& s, int64_t rows,
                                const Tensor& threshold, const Tensor& group);
// New top lists of F features, K entries each, C context tokens on either side, all empty.
FeatureTopLists empty_top_lists(int64_t features, int64_t k, int64_t context, Device device);
// lists as FeatureTopLists describes them for candidates [F, K] (f32); rows' story and position [N]
// (or undefined) and tokens [N, W]; f32 features on the lists' device.
void feature_stats_merge_(FeatureTopLists& lists, const FeatureCandidates& candidates, const FeatureStatsRows& rows,
                          const Tensor& f);
void feature_stats_merge_sparse_(FeatureTopLists& lists, const FeatureCandidates& candidates,
                                 const FeatureStatsRows& rows, const SparseFeatures& s, int64_t n);
// Dead latents without a read-back: clock [F] f64 on counts' device; dead [F] in counts' dtype or
// undefined; tokens and dead_tokens >= 0.
void latent_clock_(Tensor& clock, Tensor& dead, const Tensor& counts, double tokens, double dead_tokens);

}  // namespace sae
