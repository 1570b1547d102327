// SparseAutoencoder: init, encode/decode and the autograd loss (see model.h).
#include "sae/model.h"

#include <cmath>

#include "tensor/ops.h"

namespace sae {

SparseAutoencoder::SparseAutoencoder(int64_t d_in, int64_t d_sae, Rng& rng, DType dtype, Device device) {
  if (d_in <= 0 || d_sae <= 0) throw UsageError(cat("SAE: d_in and d_sae must be positive, got ", d_in, ", ", d_sae));
  const double enc_bound = 1.0 / std::sqrt(static_cast<double>(d_in));
  const double dec_bound = 1.0 / std::sqrt(static_cast<double>(d_sae));
  Tensor w_enc = uniform_tensor(Shape{d_in, d_sae}, -enc_bound, enc_bound, rng, dtype, device);
  Tensor bias_enc = uniform_tensor(Shape{d_sae}, -enc_bound, enc_bound, rng, dtype, device);
  Tensor w_dec = uniform_tensor(Shape{d_sae, d_in}, -dec_bound, dec_bound, rng, dtype, device);
  Tensor bias_dec = uniform_tensor(Shape{d_in}, -dec_bound, dec_bound, rng, dtype, device);
  register_all(w_enc, bias_enc, w_dec, bias_dec);
}

SparseAutoencoder::SparseAutoencoder(Tensor w_enc, Tensor bias_enc, Tensor w_dec, Tensor bias_dec) {
  if (w_enc.ndim() != 2) throw DataError(cat("SAE: W_enc must be 2-D, got ", w_enc.describe()));
  const int64_t d = w_enc.size(0), f = w_enc.size(1);
  if (bias_enc.shape() != Shape{f} || w_dec.shape() != Shape{f, d} || bias_dec.shape() != Shape{d})
    throw DataError(cat("SAE: inconsistent parameter shapes: W_enc ", w_enc.shape().str(), ", b_enc ",
                        bias_enc.shape().str(), ", W_dec ", w_dec.shape().str(), ", b_dec ", bias_dec.shape().str()));
  register_all(w_enc, bias_enc, w_dec, bias_dec);
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
