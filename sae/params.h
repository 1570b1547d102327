// SaeParams: an SAE's parameters as plain tensors, in SAELens's names and layout (the standard
// SAE's formulas are in sae/model.h, every architecture's in sae/arch.h and sae/arch_model.h), and
// SaeAdamState, torch.optim.Adam's state for them. The fused training step (sae/step) updates these
// buffers in place, checkpoints save and load them, and the autograd reference models wrap them;
// nothing here builds a graph.
//   W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D]   (D = d_in, F = d_sae; b_enc: not for gated)
//   log_threshold [F]                                    (jumprelu: theta = exp(log_threshold))
//   b_gate, b_mag, r_mag [F]                              (gated)
#pragma once
#include <array>
#include <string>

#include <utility>
#include <vector>

#include "sae/arch.h"
#include "tensor/adam_math.h"
#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace sae {

struct SaeParams {
  Tensor W_enc, b_enc, W_dec, b_dec;
  Tensor log_threshold;         // jumprelu only
  Tensor b_gate, b_mag, r_mag;  // gated only (which has no b_enc)
  // What the model computes at inference beyond its tensors (sae/arch.h): the architecture, k for
  // topk (batchtopk keeps its training k here too), and batchtopk's inference threshold (0 until
  // its first update; exported as a jumprelu).
  Architecture architecture = Architecture::Standard;
  int64_t k = 0;
  double batchtopk_threshold = 0.0;

  static constexpr std::array<const char*, 4> kNames = {"W_enc", "b_enc", "W_dec", "b_dec"};
  // Every tensor an architecture may have, in a fixed order (checkpoints, Adam, loops).
  static constexpr std::array<const char*, 8> kSlotNames = {"W_enc", "b_enc", "W_dec", "b_dec",
                                                            "log_threshold", "b_gate", "b_mag", "r_mag"};
  // PyTorch nn.Linear's default init of the original's encoder Linear(D, F) and decoder Linear(F,
  // D): W_enc, b_enc uniform in +-1/sqrt(D); W_dec, b_dec uniform in +-1/sqrt(F), drawn in that order.
  static SaeParams standard_init(int64_t d_in, int64_t d_sae, Rng& rng, DType dtype = DType::F32,
                                 Device device = Device::CPU);
  // Shapes checked against each other (DataError naming every shape otherwise).
  static SaeParams from_tensors(Tensor W_enc, Tensor b_enc, Tensor W_dec, Tensor b_dec);
  // Zeros shaped like every tensor `like` has (gradients, Adam moments); the rest is copied.
  static SaeParams zeros_like(const SaeParams& like);

  int64_t d_in() const { return W_enc.size(0); }
  int64_t d_sae() const { return W_enc.size(1); }
  Device device() const { return W_enc.device(); }
  // The four tensors in kNames order (handles: they share storage with these).
  std::array<Tensor*, 4> all() { return {&W_enc, &b_enc, &W_dec, &b_dec}; }
  std::array<const Tensor*, 4> all() const { return {&W_enc, &b_enc, &W_dec, &b_dec}; }
  // Every slot in kSlotNames order, defined or not; and the defined ones with their names.
  std::array<Tensor*, 8> slots() { return {&W_enc, &b_enc, &W_dec, &b_dec, &log_threshold, &b_gate, &b_mag, &r_mag}; }
  std::array<const Tensor*, 8> slots() const {
    return {&W_enc, &b_enc, &W_dec, &b_dec, &log_threshold, &b_gate, &b_mag, &r_mag};
  }
  std::vector<std::pair<const char*, Tensor*>> present();
  std::vector<std::pair<const char*, const Tensor*>> present() const;
  // The tensors `architecture` needs, each defined and shaped right, and no others: DataError naming
  // them otherwise.
  void check() const;
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
