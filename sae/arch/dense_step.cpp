// The dense units' shared step (see dense_step.h).
#include "sae/arch/dense_step.h"

#include "sae/step/sae_ops.h"
#include "tensor/ops.h"

namespace sae {

DenseUnitStep::DenseUnitStep(bool unit_norm_decoder, bool bf16_pre, const StepShape& shape, DType dtype,
                             Device device)
    : unit_norm_decoder_(unit_norm_decoder), bf16_pre_(bf16_pre), dtype_(dtype) {
  const int64_t max_tokens = shape.max_tokens, d_sae = shape.d_sae, d_out = shape.d_out;
  for (Tensor* t : {&pre_, &f_, &grad_})  // written before read
    *t = Tensor::empty(Shape{max_tokens, d_sae}, t == &pre_ && !bf16_pre ? dtype : activations_dtype(), device);
  x_hat_ = Tensor::zeros(Shape{max_tokens, d_out}, dtype, device);
  grad_x_hat_ = Tensor::zeros(Shape{max_tokens, d_out}, dtype, device);
  scratch_rows_ = Tensor::zeros(Shape{max_tokens, d_out}, dtype, device);
  for (Tensor* t : {&col_count_, &col_a_, &col_b_, &norms_, &scale_, &safe_norms_})
    *t = Tensor::zeros(Shape{d_sae}, dtype, device);
  tiny_ = Tensor::full(Shape{1}, 1e-30, dtype, device);
  sums_ = Tensor::zeros(Shape{4}, dtype, device);
}

StepSums DenseUnitStep::sums_or_pending(double lambda) {
  lambda_ = lambda;
  if (!keeps_sums_on_device()) return read_sums();
  return pending_sums(sums_, tokens_, false);
}

void DenseUnitStep::start_forward(const SaeParams& params, const Tensor& x) {
  keep_dtype(pre_, bf16_pre_ ? activations_dtype() : dtype_);
  keep_dtype(f_, activations_dtype());
  keep_dtype(grad_, activations_dtype());
  tokens_ = x.size(0);
  Tensor pre = pre_.slice_rows(0, tokens_);
  matmul_(pre, x, false, params.W_enc, false);
  reduce_axis_(ReduceOp::norm2, norms_, params.W_dec, 1);
}

void DenseUnitStep::decode(const SaeParams& params, const Tensor& target) {
  Tensor f = f_.slice_rows(0, tokens_), x_hat = x_hat_.slice_rows(0, tokens_), r = grad_x_hat_.slice_rows(0, tokens_);
  decode_into(x_hat, f, params);
  binary_(BinaryOp::sub, r, x_hat, target);
}

void DenseUnitStep::decode_into(Tensor& out, const Tensor& f, const SaeParams& params) {
  matmul_(out, f, false, params.W_dec, false);
  sum_over(collectives_, Group::Shards, out);  // a latent shard's part of the sum
  add_(out, params.b_dec);
}

std::vector<std::string> DenseUnitStep::backward(const SaeParams& params, const Tensor& x, double lambda,
                                                 SaeParams& grads, const FusedAdam*) {
  const int64_t n = tokens_;
  Tensor dx = grad_x_hat_.slice_rows(0, n), f = f_.slice_rows(0, n), grad = grad_.slice_rows(0, n);
  affine_(dx, dx, 2.0, 0.0);
  reduce_axis_(ReduceOp::sum, grads.b_dec, dx, 0);
  matmul_(grads.W_dec, f, true, dx, false);
  matmul_(grad, dx, false, params.W_dec, true);  // dL/df from the reconstruction
  activation_backward(params, lambda, grads, grad);
  // The decoder-norm terms: scale_i u_i = (scale_i / n_i) W_dec[i,:].
  binary_(BinaryOp::maximum, safe_norms_, norms_, tiny_);
  binary_(BinaryOp::div, scale_, scale_, safe_norms_);
  add_scaled_rows_(grads.W_dec, params.W_dec, scale_);
  matmul_(grads.W_enc, x, true, grad, false);
  if (unit_norm_decoder_) decoder_project_(grads.W_dec, params.W_dec, norms_);
  return {};
}

void DenseUnitStep::after_update(SaeParams& params) {
  if (unit_norm_decoder_) decoder_normalize_(params.W_dec);
}

StepFeatures DenseUnitStep::step_features() const {
  StepFeatures out;
  out.tokens = tokens_;
  out.sparse = false;
  out.dense = features();
  return out;
}

}  // namespace sae
