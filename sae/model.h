// SparseAutoencoder: the standard SAE of the study (docs/contract.md §1), in SAELens's layout.
//   f = relu(x W_enc + b_enc)        x [N, D], W_enc [D, F], b_enc [F]
//   x_hat = f W_dec + b_dec          W_dec [F, D], b_dec [D]
//   rec = sum (x - x_hat)^2           (a sum over all N*D elements, not a mean)
//   l1  = sum_{t,i} f[t,i] * ||W_dec[i,:]||_2   (decoder-norm-weighted)
//   loss = rec + lambda * l1
// Letters: N tokens, D input width (d_in), F features (d_sae).
// The autograd methods here are the reference (tests) and what sae_apply runs; the fused training
// step (sae/step/sae_step.h) works on the same parameters as plain tensors (sae/params.h).
#pragma once
#include "autograd/functions.h"
#include "nn/module.h"
#include "sae/params.h"
#include "tensor/rng.h"

namespace sae {

class SparseAutoencoder : public nn::Module {
 public:
  // PyTorch nn.Linear default init of the original's encoder Linear(D, F) and decoder Linear(F, D):
  // W_enc, b_enc uniform in +-1/sqrt(D); W_dec, b_dec uniform in +-1/sqrt(F).
  SparseAutoencoder(int64_t d_in, int64_t d_sae, Rng& rng, DType dtype = DType::F32, Device device = Device::CPU);
  // Parameters with given values (e.g. loaded from a checkpoint); shapes are checked.
  SparseAutoencoder(Tensor W_enc, Tensor b_enc, Tensor W_dec, Tensor b_dec);
  // Wraps these tensors (sharing their storage): the model sees every later change to them.
  explicit SparseAutoencoder(const SaeParams& params);
  // The parameter tensors (sharing storage with the model's Variables).
  SaeParams params() const;

  int64_t d_in() const { return W_enc.shape()[0]; }
  int64_t d_sae() const { return W_enc.shape()[1]; }
  Device device() const { return W_enc.data().device(); }

  Variable encode(const Variable& x) const;  // [N, D] -> f [N, F]
  Variable decode(const Variable& f) const;  // [N, F] -> x_hat [N, D]

  struct Loss {
    Variable rec, l1, total;
  };
  Loss loss(const Variable& x, double l1_coefficient) const;

  // Handles to the registered parameters, in SAELens names.
  Variable W_enc, b_enc, W_dec, b_dec;

 private:
  void register_all(Tensor w_enc, Tensor bias_enc, Tensor w_dec, Tensor bias_dec);
};

}  // namespace sae
