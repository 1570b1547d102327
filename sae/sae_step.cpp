// SaeStep: see sae_step.h for the formulas, in the order they run here.
#include "sae/sae_step.h"

#include "tensor/ops.h"

namespace sae {

SaeStep::SaeStep(int64_t max_tokens, int64_t d_in, int64_t d_sae, DType dtype, Device device)
    : max_tokens_(max_tokens) {
  if (max_tokens <= 0) throw UsageError(cat("SaeStep: max_tokens must be positive, got ", max_tokens));
  f_ = Tensor::zeros(Shape{max_tokens, d_sae}, dtype, device);
  grad_f_ = Tensor::zeros(Shape{max_tokens, d_sae}, dtype, device);
  x_hat_ = Tensor::zeros(Shape{max_tokens, d_in}, dtype, device);
  grad_x_hat_ = Tensor::zeros(Shape{max_tokens, d_in}, dtype, device);
  col_sum_ = Tensor::zeros(Shape{d_sae}, dtype, device);
  col_count_ = Tensor::zeros(Shape{d_sae}, dtype, device);
  norms_ = Tensor::zeros(Shape{d_sae}, dtype, device);
  scratch_f_ = Tensor::zeros(Shape{d_sae}, dtype, device);
  sums_ = Tensor::zeros(Shape{3}, dtype, device);
  tiny_ = Tensor::full(Shape{1}, 1e-30, dtype, device);
}

void SaeStep::run_forward(const SparseAutoencoder& model, const Tensor& x) {
  const int64_t n = x.size(0);
  if (x.ndim() != 2 || x.size(1) != model.d_in())
    throw Error(cat("SaeStep: batch ", x.describe(), " does not match d_in ", model.d_in()));
  if (n > max_tokens_) throw Error(cat("SaeStep: batch of ", n, " tokens exceeds the workspace (", max_tokens_, ")"));
  tokens_ = n;
  Tensor f = features(), x_hat = reconstruction(), grad_x_hat = grad_x_hat_.slice_rows(0, n);
  Tensor rec = sums_.slice_rows(0, 1), l1 = sums_.slice_rows(1, 2), active = sums_.slice_rows(2, 3);

  matmul_(f, x, false, model.W_enc.data(), false);
  encoder_activate_(f, model.b_enc.data(), col_sum_, col_count_);
  matmul_(x_hat, f, false, model.W_dec.data(), false);
  add_(x_hat, model.b_dec.data());
  binary_(BinaryOp::sub, grad_x_hat, x_hat, x);  // r = x_hat - x (scaled to 2r in backward)
  reduce_all_(ReduceOp::sum_squares, rec, grad_x_hat);
  reduce_axis_(ReduceOp::norm2, norms_, model.W_dec.data(), 1);
  binary_(BinaryOp::mul, scratch_f_, col_sum_, norms_);
  reduce_all_(ReduceOp::sum, l1, scratch_f_);
  reduce_all_(ReduceOp::sum, active, col_count_);
}

StepSums SaeStep::read_sums(double l1_coefficient) {
  std::vector<double> host = sums_.to_vector();
  StepSums s;
  s.rec = host[0];
  s.l1 = host[1];
  s.active = host[2];
  s.loss = s.rec + l1_coefficient * s.l1;
  s.tokens = tokens_;
  return s;
}

StepSums SaeStep::forward(const SparseAutoencoder& model, const Tensor& x, double l1_coefficient) {
  run_forward(model, x);
  return read_sums(l1_coefficient);
}

namespace {
Tensor& grad_buffer(Variable& param) {
  if (!param.grad().defined()) param.grad() = Tensor::zeros(param.shape(), param.data().dtype(), param.data().device());
  return param.grad();
}
}  // namespace

StepSums SaeStep::forward_backward(SparseAutoencoder& model, const Tensor& x, double l1_coefficient) {
  run_forward(model, x);
  const int64_t n = tokens_;
  Tensor f = features(), grad_x_hat = grad_x_hat_.slice_rows(0, n), grad_f = grad_f_.slice_rows(0, n);
  Tensor& grad_W_enc = grad_buffer(model.W_enc);
  Tensor& grad_b_enc = grad_buffer(model.b_enc);
  Tensor& grad_W_dec = grad_buffer(model.W_dec);
  Tensor& grad_b_dec = grad_buffer(model.b_dec);
  const Tensor& W_dec = model.W_dec.data();

  affine_(grad_x_hat, grad_x_hat, 2.0, 0.0);  // d rec / d x_hat = 2 r
  reduce_axis_(ReduceOp::sum, grad_b_dec, grad_x_hat, 0);
  matmul_(grad_W_dec, f, true, grad_x_hat, false);
  // L1 through the decoder norms: d(lambda sum_i s_i n_i)/dW_dec[i,:] = lambda s_i W_dec[i,:] / n_i
  binary_(BinaryOp::maximum, scratch_f_, norms_, tiny_);
  binary_(BinaryOp::div, scratch_f_, col_sum_, scratch_f_);
  affine_(scratch_f_, scratch_f_, l1_coefficient, 0.0);
  add_scaled_rows_(grad_W_dec, W_dec, scratch_f_);
  // Back to the features: df = dx_hat W_dec^T + lambda n, masked by f > 0.
  matmul_(grad_f, grad_x_hat, false, W_dec, true);
  affine_(scratch_f_, norms_, l1_coefficient, 0.0);
  encoder_backward_(grad_f, f, scratch_f_, grad_b_enc);
  matmul_(grad_W_enc, x, true, grad_f, false);
  return read_sums(l1_coefficient);
}

}  // namespace sae
