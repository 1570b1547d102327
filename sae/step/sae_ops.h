// Front-end of the SAE step's kernels (sae_kernels.h): checks shapes, dtypes and devices, naming
// the op and the operands in every error, and dispatches to the kernel of the tensors' device.
// Every function writes into existing tensors (no allocation).
#pragma once
#include "sae/step/sae_kernels.h"

namespace sae {

void encoder_activate_(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count);
void encoder_backward_(Tensor& grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum);
void add_scaled_rows_(Tensor& out, const Tensor& x, const Tensor& row_scale);
// The sparse path. The caller guarantees that the entry lists and dpre have room for every entry of
// f that is > 0 (the checks here cannot count them without reading f).
void sparse_index_(SparseFeatures& s, const Tensor& f, const Tensor& col_count);
void sparse_decode_(Tensor& x_hat, const SparseFeatures& s, const Tensor& W_dec, const Tensor& b_dec);
void sparse_decoder_backward_(Tensor& dpre, ParamUpdate& W_dec, const Tensor& grad_x_hat, const SparseFeatures& s,
                              const Tensor& norms, const Tensor& col_sum, double l1, bool unit_norm = false);
void sparse_encoder_backward_(ParamUpdate& W_enc, ParamUpdate& b_enc, const Tensor& x, const SparseFeatures& s,
                              const Tensor& dpre);

// The other architectures (sae/arch.h). Selections write by-token lists into rows row0.. of s; the
// caller guarantees room for every entry (N k for topk_select, total for batchtopk_select).
void topk_select_(SparseFeatures& s, const Tensor& pre, const Tensor& bias, const Tensor& allowed, int64_t k,
                  int64_t row0);
void batchtopk_select_(SparseFeatures& s, const Tensor& pre, const Tensor& bias, int64_t total);
void sparse_by_feature_(SparseFeatures& s, Tensor& col_sum, Tensor& col_count);
void decoder_project_(Tensor& grad, const Tensor& W, const Tensor& norms);
void decoder_normalize_(Tensor& W);
void jumprelu_forward_(Tensor& f, Tensor& pre, const Tensor& bias, const Tensor& log_threshold, const Tensor& norms,
                       const JumpReluConstants& c, Tensor& col_count, Tensor& col_a, Tensor& col_b);
void jumprelu_backward_(Tensor& grad, const Tensor& pre, const Tensor& log_threshold, const Tensor& norms,
                        const JumpReluConstants& c, Tensor& grad_bias, Tensor& grad_log_threshold,
                        Tensor& decoder_scale);
void gated_forward_(Tensor& f, Tensor& gate, const Tensor& pre, const Tensor& b_gate, const Tensor& b_mag,
                    const Tensor& r_mag, Tensor& col_count, Tensor& col_gate);
void gated_backward_(Tensor& grad, const Tensor& grad_gate, const Tensor& pre, const Tensor& b_gate,
                     const Tensor& b_mag, const Tensor& r_mag, const Tensor& norms, double lambda, Tensor& grad_b_gate,
                     Tensor& grad_b_mag, Tensor& grad_r_mag);

// Feature statistics (sae/train/feature_stats.h); defined in stats_ops.cpp. out's tensors are
// [F, K] (values in f's dtype, rows and groups i32) and count [F] i32; histogram [F, kHistogramBins]
// f64; threshold [F] in f's dtype; group [N] i32; all on one device.
void feature_stats_scan_(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                         const Tensor& group);
// `rows` = N: the by-feature lists' entries of rows >= N are skipped (AuxK's).
void feature_stats_scan_sparse_(FeatureCandidates& out, Tensor& histogram, const SparseFeatures& s, int64_t rows,
                                const Tensor& threshold, const Tensor& group);
void feature_values_at_(Tensor& out, const Tensor& f, const Tensor& rows, const Tensor& features);
void feature_values_at_sparse_(Tensor& out, const SparseFeatures& s, int64_t rows_limit, const Tensor& rows,
                               const Tensor& features);

}  // namespace sae
