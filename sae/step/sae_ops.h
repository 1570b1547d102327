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
                              const Tensor& norms, const Tensor& col_sum, double l1);
void sparse_encoder_backward_(ParamUpdate& W_enc, ParamUpdate& b_enc, const Tensor& x, const SparseFeatures& s,
                              const Tensor& dpre);

}  // namespace sae
