// SaeStep: the fused forward and backward of one training step of the standard SAE (model.h),
// written as a fixed sequence of kernels into buffers allocated once (no allocation per step).
// It computes the same numbers as SparseAutoencoder::loss followed by backward(), up to
// floating-point order; tests/test_sae_model.cpp compares the two.
//
//   pre = x W_enc; f = relu(pre + b_enc)            (encoder_activate also sums f per feature)
//   x_hat = f W_dec + b_dec; r = x_hat - x; rec = sum r^2
//   n_i = ||W_dec[i,:]||; l1 = sum_i n_i * sum_t f[t,i]
//   dx_hat = 2 r;  db_dec = sum_t dx_hat;  dW_dec = f^T dx_hat + lambda * (sum_t f[t,i] / n_i) W_dec[i,:]
//   df = dx_hat W_dec^T + lambda n;  dpre = df * (f > 0);  db_enc = sum_t dpre;  dW_enc = x^T dpre
// Letters: N tokens in the batch (up to max_tokens), D input width, F features.
#pragma once
#include "sae/model.h"

namespace sae {

struct StepSums {
  double rec = 0;      // sum of squared reconstruction error
  double l1 = 0;       // decoder-norm-weighted L1 (before multiplying by lambda)
  double loss = 0;     // rec + lambda * l1
  double active = 0;   // number of (token, feature) pairs with f > 0
  int64_t tokens = 0;  // N
};

class SaeStep {
 public:
  SaeStep(int64_t max_tokens, int64_t d_in, int64_t d_sae, DType dtype, Device device);

  // Forward and backward for x [N, D] (N <= max_tokens). Overwrites the grads of the model's four
  // parameters (allocating them on first use) with d(rec + lambda * l1)/d(param).
  StepSums forward_backward(SparseAutoencoder& model, const Tensor& x, double l1_coefficient);
  // Forward only (no gradients), e.g. for evaluation.
  StepSums forward(const SparseAutoencoder& model, const Tensor& x, double l1_coefficient);

  // Views of the last call's results (valid until the next call).
  Tensor features() const { return f_.slice_rows(0, tokens_); }          // f [N, F]
  Tensor reconstruction() const { return x_hat_.slice_rows(0, tokens_); }  // x_hat [N, D]
  const Tensor& feature_counts() const { return col_count_; }            // tokens each feature fired on [F]

 private:
  void run_forward(const SparseAutoencoder& model, const Tensor& x);
  StepSums read_sums(double l1_coefficient);

  int64_t max_tokens_, tokens_ = 0;
  Tensor f_, grad_f_;           // [max_tokens, F]
  Tensor x_hat_, grad_x_hat_;   // [max_tokens, D]
  Tensor col_sum_, col_count_;  // [F]: sum_t f[t,i], count_t f[t,i] > 0
  Tensor norms_, scratch_f_;    // [F]
  Tensor sums_;                 // [3]: rec, l1, active
  Tensor tiny_;                 // [1]: floor for decoder norms in divisions
};

}  // namespace sae
