// SaeParams: the standard SAE's parameters as plain tensors, in SAELens's names and layout (the
// formulas are in sae/model.h), and SaeAdamState, torch.optim.Adam's state for them. The fused
// training step (sae/step) updates these buffers in place, checkpoints save and load them, and the
// autograd reference model (sae/model.h) wraps them; nothing here builds a graph.
//   W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D]   (D = d_in, F = d_sae)
#pragma once
#include <array>
#include <string>

#include "tensor/adam_math.h"
#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace sae {

struct SaeParams {
  Tensor W_enc, b_enc, W_dec, b_dec;

  static constexpr std::array<const char*, 4> kNames = {"W_enc", "b_enc", "W_dec", "b_dec"};
  // PyTorch nn.Linear's default init of the original's encoder Linear(D, F) and decoder Linear(F,
  // D): W_enc, b_enc uniform in +-1/sqrt(D); W_dec, b_dec uniform in +-1/sqrt(F), drawn in that order.
  static SaeParams standard_init(int64_t d_in, int64_t d_sae, Rng& rng, DType dtype = DType::F32,
                                 Device device = Device::CPU);
  // Shapes checked against each other (DataError naming every shape otherwise).
  static SaeParams from_tensors(Tensor W_enc, Tensor b_enc, Tensor W_dec, Tensor b_dec);
  static SaeParams zeros_like(const SaeParams& like);

  int64_t d_in() const { return W_enc.size(0); }
  int64_t d_sae() const { return W_enc.size(1); }
  Device device() const { return W_enc.device(); }
  // The four tensors in kNames order (handles: they share storage with these).
  std::array<Tensor*, 4> all() { return {&W_enc, &b_enc, &W_dec, &b_dec}; }
  std::array<const Tensor*, 4> all() const { return {&W_enc, &b_enc, &W_dec, &b_dec}; }
  SaeParams to(Device device) const;  // copies (or shares, when already there)
  SaeParams clone() const;
};

// torch.optim.Adam's state for SaeParams: the moments m and v (shaped like the parameters) and the
// number of steps taken; betas and eps are fixed for a run.
struct SaeAdamState {
  SaeParams m, v;
  int64_t steps = 0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;

  static SaeAdamState zeros_like(const SaeParams& params, double beta1 = 0.9, double beta2 = 0.999,
                                 double eps = 1e-8);
  // Counts one step and returns its scalars (tensor/adam_math.h).
  AdamScalars next_step(double lr);
};

}  // namespace sae
