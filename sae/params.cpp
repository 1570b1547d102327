// SaeParams and SaeAdamState (see params.h).
#include "sae/params.h"

#include <cmath>

#include "tensor/ops.h"

namespace sae {

SaeParams SaeParams::standard_init(int64_t d_in, int64_t d_sae, Rng& rng, DType dtype, Device device) {
  if (d_in <= 0 || d_sae <= 0) throw UsageError(cat("SAE: d_in and d_sae must be positive, got ", d_in, ", ", d_sae));
  const double enc_bound = 1.0 / std::sqrt(static_cast<double>(d_in));
  const double dec_bound = 1.0 / std::sqrt(static_cast<double>(d_sae));
  SaeParams p;
  p.W_enc = uniform_tensor(Shape{d_in, d_sae}, -enc_bound, enc_bound, rng, dtype, device);
  p.b_enc = uniform_tensor(Shape{d_sae}, -enc_bound, enc_bound, rng, dtype, device);
  p.W_dec = uniform_tensor(Shape{d_sae, d_in}, -dec_bound, dec_bound, rng, dtype, device);
  p.b_dec = uniform_tensor(Shape{d_in}, -dec_bound, dec_bound, rng, dtype, device);
  return p;
}

SaeParams SaeParams::from_tensors(Tensor W_enc, Tensor b_enc, Tensor W_dec, Tensor b_dec) {
  if (!W_enc.defined() || W_enc.ndim() != 2) throw DataError(cat("SAE: W_enc must be 2-D, got ", W_enc.describe()));
  const int64_t d = W_enc.size(0), f = W_enc.size(1);
  if (!b_enc.defined() || !W_dec.defined() || !b_dec.defined() || b_enc.shape() != Shape{f} ||
      W_dec.shape() != Shape{f, d} || b_dec.shape() != Shape{d})
    throw DataError(cat("SAE: inconsistent parameter shapes: W_enc ", W_enc.describe(), ", b_enc ", b_enc.describe(),
                        ", W_dec ", W_dec.describe(), ", b_dec ", b_dec.describe()));
  return SaeParams{std::move(W_enc), std::move(b_enc), std::move(W_dec), std::move(b_dec)};
}

SaeParams SaeParams::zeros_like(const SaeParams& like) {
  SaeParams p;
  for (int i = 0; i < 4; ++i) {
    const Tensor& t = *like.all()[i];
    *p.all()[i] = Tensor::zeros(t.shape(), t.dtype(), t.device());
  }
  return p;
}

SaeParams SaeParams::to(Device device) const {
  return SaeParams{W_enc.to(device), b_enc.to(device), W_dec.to(device), b_dec.to(device)};
}

SaeParams SaeParams::clone() const { return SaeParams{W_enc.clone(), b_enc.clone(), W_dec.clone(), b_dec.clone()}; }

SaeAdamState SaeAdamState::zeros_like(const SaeParams& params, double beta1, double beta2, double eps) {
  SaeAdamState s;
  s.m = SaeParams::zeros_like(params);
  s.v = SaeParams::zeros_like(params);
  s.beta1 = beta1;
  s.beta2 = beta2;
  s.eps = eps;
  return s;
}

AdamScalars SaeAdamState::next_step(double lr) {
  ++steps;
  AdamScalars s;
  s.lr = lr;
  s.beta1 = beta1;
  s.beta2 = beta2;
  s.eps = eps;
  s.weight_decay = 0.0;
  s.step = steps;
  return s;
}

}  // namespace sae
