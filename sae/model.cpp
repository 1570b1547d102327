// SparseAutoencoder: init, encode/decode and the autograd loss (see model.h).
#include "sae/model.h"

#include "tensor/ops.h"

namespace sae {

SparseAutoencoder::SparseAutoencoder(int64_t d_in, int64_t d_sae, Rng& rng, DType dtype, Device device)
    : SparseAutoencoder(SaeParams::standard_init(d_in, d_sae, rng, dtype, device)) {}

SparseAutoencoder::SparseAutoencoder(Tensor w_enc, Tensor bias_enc, Tensor w_dec, Tensor bias_dec)
    : SparseAutoencoder(SaeParams::from_tensors(w_enc, bias_enc, w_dec, bias_dec)) {}

SparseAutoencoder::SparseAutoencoder(const SaeParams& p) {
  const SaeParams checked = SaeParams::from_tensors(p.W_enc, p.b_enc, p.W_dec, p.b_dec);
  register_all(checked.W_enc, checked.b_enc, checked.W_dec, checked.b_dec);
}

SaeParams SparseAutoencoder::params() const {
  SaeParams p;
  p.W_enc = W_enc.data();
  p.b_enc = b_enc.data();
  p.W_dec = W_dec.data();
  p.b_dec = b_dec.data();
  return p;
}

void SparseAutoencoder::register_all(Tensor w_enc, Tensor bias_enc, Tensor w_dec, Tensor bias_dec) {
  W_enc = register_parameter("W_enc", w_enc);
  b_enc = register_parameter("b_enc", bias_enc);
  W_dec = register_parameter("W_dec", w_dec);
  b_dec = register_parameter("b_dec", bias_dec);
}

Variable SparseAutoencoder::encode(const Variable& x) const { return ag::relu(ag::matmul(x, W_enc) + b_enc); }

Variable SparseAutoencoder::decode(const Variable& f) const { return ag::matmul(f, W_dec) + b_dec; }

SparseAutoencoder::Loss SparseAutoencoder::loss(const Variable& x, double l1_coefficient) const {
  Variable f = encode(x);
  Variable x_hat = decode(f);
  Loss out;
  out.rec = ag::sum(ag::square(x_hat - x));
  // Sum the decoder rows' norms in first ([F]) and multiply by f after: never an [N, F, D] tensor.
  out.l1 = ag::sum(f * ag::norm2(W_dec, 1));
  out.total = out.rec + out.l1 * l1_coefficient;
  return out;
}

}  // namespace sae
