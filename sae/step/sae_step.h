// SaeStep: the fused forward and backward of one training step of the standard SAE (sae/model.h),
// written as a fixed sequence of kernels (sae_kernels.h and the generic tensor ops) into buffers
// allocated once (no allocation per step). It works on plain parameter tensors and Adam state
// (sae/params.h) and computes the same numbers as SparseAutoencoder::loss followed by backward(),
// up to floating-point order; tests/sae/test_sae_model.cpp compares the two.
//
//   pre = x W_enc; f = relu(pre + b_enc)            (encoder_activate also sums f per feature)
//   x_hat = f W_dec + b_dec; r = x_hat - x; rec = sum r^2
//   n_i = ||W_dec[i,:]||; l1 = sum_i n_i * sum_t f[t,i]
//   dx_hat = 2 r;  db_dec = sum_t dx_hat;  dW_dec = f^T dx_hat + lambda * (sum_t f[t,i] / n_i) W_dec[i,:]
//   df = dx_hat W_dec^T + lambda n;  dpre = df * (f > 0);  db_enc = sum_t dpre;  dW_enc = x^T dpre
//
// The sparse path (SparseMode, tests/sae/step/test_sparse.cpp) computes the same formulas from the entries
// of f that are > 0 only: after the encoder GEMM (which stays dense) the positive entries are
// listed by feature and by token (sparse_index), and then
//   x_hat[t,:] = b_dec + sum_{i: f[t,i] > 0} f[t,i] W_dec[i,:]                      (sparse_decode)
//   dpre[t,i]  = dx_hat[t,:] . W_dec[i,:] + lambda n_i, only where f[t,i] > 0;
//   dW_dec[i,:] = sum_t f[t,i] dx_hat[t,:] + lambda (sum_t f[t,i] / n_i) W_dec[i,:]  (sparse_decoder_backward)
//   dW_enc[:,i] = sum_t dpre[t,i] x[t,:];  db_enc[i] = sum_t dpre[t,i]              (sparse_encoder_backward)
// so the four products that were GEMMs cost O(entries * D) instead of O(N * F * D). In train_step
// the two backward kernels also apply Adam to each row of W_dec and each block of columns of
// W_enc as soon as its gradient is known: the gradients of W_enc, b_enc and W_dec are never
// stored, and Adam's one pass over all the parameters (m and v decay everywhere, as in
// torch.optim.Adam) is the same memory pass that computes them.
//
// The other architectures (sae/arch.h: TopK, BatchTopK, JumpReLU, Gated) have their own step,
// ArchStep (arch_step.h); a SaeStep made with their ArchOptions hands every call to it.
// Letters: N tokens in the batch (up to max_tokens), D input width, F features.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "sae/arch.h"
#include "sae/params.h"
#include "sae/step/sae_kernels.h"

namespace sae {

class ArchStep;

struct StepSums {
  double rec = 0;      // sum of squared reconstruction error
  double l1 = 0;       // the sparsity term lambda multiplies: the decoder-norm-weighted L1 (standard,
                       // gated), JumpReLU's L0 or tanh sum, 0 for topk and batchtopk
  double aux = 0;      // the auxiliary term as it enters the loss (AuxK, gated's, JumpReLU's pre-activation)
  double loss = 0;     // rec + lambda * l1 + aux
  double active = 0;   // number of (token, feature) pairs with f > 0
  int64_t tokens = 0;  // N
  bool sparse = false; // this step took the sparse path
};

// The features of a step's batch as the step holds them, for statistics (sae/train/feature_stats.h):
// on the sparse path the by-feature entry lists (col_ptr, rows, vals; entries of rows >= tokens are
// AuxK's, not features), otherwise f [N, F]. Views of the step's buffers: valid until its next call.
struct StepFeatures {
  int64_t tokens = 0;
  bool sparse = false;
  Tensor dense;          // f [N, F], when !sparse
  SparseFeatures lists;  // when sparse
};

// --sparse: off = the dense GEMMs always; on = the sparse path always; auto = per step, the sparse
// path when this batch's density (active / (N * F), known right after the encoder) is at most
// SaeStep::auto_max_density(), so a dense model runs the dense path as before.
enum class SparseMode { Off, On, Auto };
SparseMode parse_sparse_mode(const std::string& text);  // "off" | "on" | "auto"; UsageError otherwise
const char* sparse_mode_name(SparseMode mode);

class SaeStep {
 public:
  // `arch` other than standard: every call goes to an ArchStep (`sparse` does not apply to it:
  // topk and batchtopk are always sparse, jumprelu and gated always dense).
  SaeStep(int64_t max_tokens, int64_t d_in, int64_t d_sae, DType dtype, Device device,
          SparseMode sparse = SparseMode::Off, const ArchOptions& arch = ArchOptions{});
  ~SaeStep();

  // Forward and backward for x [N, D] (N <= max_tokens): writes d(rec + lambda * l1)/d(param) of
  // each parameter into `grads` (shaped like params; see SaeParams::zeros_like).
  StepSums forward_backward(const SaeParams& params, const Tensor& x, double l1_coefficient, SaeParams& grads);
  // Forward only (no gradients), e.g. for evaluation.
  StepSums forward(const SaeParams& params, const Tensor& x, double l1_coefficient);
  // One training step: forward, backward and one Adam step at learning rate lr on params and adam.
  // On the sparse path Adam is fused into the backward (the gradients of W_enc, b_enc and W_dec are
  // never stored). When the loss is not finite nothing is updated (the caller stops).
  StepSums train_step(SaeParams& params, SaeAdamState& adam, const Tensor& x, double l1_coefficient, double lr);

  // Views of the last call's results (valid until the next call).
  Tensor features() const;        // f [N, F]
  Tensor reconstruction() const;  // x_hat [N, D]
  const Tensor& feature_counts() const;  // tokens each feature fired on [F]
  StepFeatures step_features() const;    // f as the last call left it (dense or entry lists)
  // The other architectures' step (null for the standard SAE), and AuxK's clock (tokens since each
  // latent last fired: a resumed run sets it; empty for architectures without AuxK).
  ArchStep* arch_step() { return arch_.get(); }
  std::vector<int64_t>& tokens_since_fired();

  SparseMode sparse_mode() const { return sparse_mode_; }
  // Auto mode's threshold. The default per device is the crossover measured by bench/bench_sparse.cpp.
  double auto_max_density() const { return auto_max_density_; }
  void set_auto_max_density(double density) { auto_max_density_ = density; }

 private:
  void run_forward(const SaeParams& params, const Tensor& x);
  void output_gradient(Tensor& grad_b_dec);
  void dense_backward(const SaeParams& params, const Tensor& x, double l1_coefficient, SaeParams& grads);
  StepSums read_sums(double l1_coefficient);
  void reserve_entries(double active);

  int64_t max_tokens_, tokens_ = 0;
  Tensor f_, grad_f_;           // [max_tokens, F] (grad_f_ made on the first dense backward)
  SaeParams grads_;             // train_step's gradients (made on first use)
  Tensor x_hat_, grad_x_hat_;   // [max_tokens, D]
  Tensor col_sum_, col_count_;  // [F]: sum_t f[t,i], count_t f[t,i] > 0
  Tensor norms_, scratch_f_;    // [F]
  Tensor sums_;                 // [3]: rec, l1, active
  Tensor tiny_;                 // [1]: floor for decoder norms in divisions
  // Sparse path: f's positive entries (sae_kernels.h), dLoss/dpre at the same entries (by feature).
  SparseMode sparse_mode_;
  double auto_max_density_;
  bool sparse_ = false;         // the last forward took the sparse path
  int64_t capacity_ = 0;        // entries the lists and dpre_ have room for
  SparseFeatures lists_;        // row_ptr [max_tokens+1]; lists_for_batch() views its first N+1
  Tensor dpre_;                 // [capacity_]
  SparseFeatures lists_for_batch() const;
  std::unique_ptr<ArchStep> arch_;
  std::vector<int64_t> no_clock_;
};

}  // namespace sae
