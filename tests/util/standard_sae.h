// The standard SAE as the tests of the standard unit use it: its parameters as autograd Variables of
// an nn::Module (so nn::Adam and finite differences can drive them), its loss from the standard unit's
// one reference (sae/arch/standard: reference_loss), inference from the unit, and helpers that run
// the fused step (SaeStep) on the same objects: gradients land in the module's Variable grads (made
// when missing), Adam updates in its parameters.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "nn/module.h"
#include "sae/arch/registry.h"
#include "sae/arch/sae_step.h"
#include "sae/arch/standard/standard.h"
#include "sae/train/arch_config.h"
#include "sae/train/train_config.h"

namespace sae::testing {

// The settings a unit reads, as a run with these option values would give them (every other
// option at its default).
inline ArchSettings unit_settings(const std::string& unit, const std::vector<std::pair<std::string, Json>>& given = {},
                                  int64_t dead_window = 1000000) {
  return arch_settings(unit, given, dead_window);
}

// The standard SAE's step with --sparse `mode`.
inline SaeStep standard_step(int64_t max_tokens, int64_t d, int64_t f, DType dtype, Device device,
                             SparseMode mode = SparseMode::Off) {
  return SaeStep(standard_unit(), unit_settings("standard", {{"sparse", Json(sparse_mode_name(mode))}}), max_tokens, d,
                 f, dtype, device);
}

class StandardSae : public nn::Module {
 public:
  StandardSae(int64_t d_in, int64_t d_sae, Rng& rng, DType dtype = DType::F32, Device device = Device::CPU)
      : StandardSae(SaeParams::standard_init(d_in, d_sae, rng, dtype, device)) {}
  StandardSae(Tensor w_enc, Tensor bias_enc, Tensor w_dec, Tensor bias_dec)
      : StandardSae(SaeParams::from_tensors(w_enc, bias_enc, w_dec, bias_dec)) {}
  explicit StandardSae(const SaeParams& p) {
    const SaeParams checked = SaeParams::from_tensors(p.W_enc, p.b_enc, p.W_dec, p.b_dec);
    W_enc = register_parameter("W_enc", checked.W_enc);
    b_enc = register_parameter("b_enc", checked.b_enc);
    W_dec = register_parameter("W_dec", checked.W_dec);
    b_dec = register_parameter("b_dec", checked.b_dec);
  }

  // The parameter tensors (sharing storage with the Variables).
  SaeParams params() const { return SaeParams::from_tensors(W_enc.data(), b_enc.data(), W_dec.data(), b_dec.data()); }
  int64_t d_in() const { return W_enc.shape()[0]; }
  int64_t d_sae() const { return W_enc.shape()[1]; }

  struct Loss {
    Variable rec, l1, total;
  };
  Loss loss(const Variable& x, double lambda) const {
    ArchVariables v;
    v.W_enc = W_enc;
    v.b_enc = b_enc;
    v.W_dec = W_dec;
    v.b_dec = b_dec;
    const ReferenceLoss r = standard_unit().reference_loss(ArchSettings(), v, x.data(), lambda, nullptr, nullptr);
    return {r.rec, r.sparsity, r.total};
  }
  Variable encode(const Variable& x) const { return Variable(sae_encode(params(), x.data())); }
  Variable decode(const Variable& f) const { return Variable(sae_decode(params(), f.data())); }

  Variable W_enc, b_enc, W_dec, b_dec;
};

inline StepSums fused_backward(SaeStep& step, StandardSae& model, const Tensor& x, double lambda) {
  SaeParams grads = model.params();
  Variable* vars[4] = {&model.W_enc, &model.b_enc, &model.W_dec, &model.b_dec};
  Tensor* slots[4] = {&grads.W_enc, &grads.b_enc, &grads.W_dec, &grads.b_dec};
  for (int i = 0; i < 4; ++i) {
    const Tensor& p = vars[i]->data();
    if (!vars[i]->grad().defined()) vars[i]->grad() = Tensor::zeros(p.shape(), p.dtype(), p.device());
    *slots[i] = vars[i]->grad();
  }
  return step.forward_backward(model.params(), x, lambda, grads);
}

inline StepSums fused_train_step(SaeStep& step, StandardSae& model, SaeAdamState& adam, const Tensor& x, double lambda,
                                 double lr) {
  SaeParams params = model.params();
  return step.train_step(params, adam, x, lambda, lr);
}

}  // namespace sae::testing
