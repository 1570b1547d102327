// The standard SAE's kernel front-end and CPU table (see standard_kernels.h).
#include "sae/arch/standard/standard_kernels.h"
#include "sae/step/sae_ops.h"
#include "tensor/checks.h"

namespace sae {

const StandardKernelTable& standard_cpu_kernels() {
  static const StandardKernelTable table{STANDARD_KERNELS(SAE_CPU_KERNEL)};
  return table;
}

namespace {
// v holds one value per row of m [R, C] (v [R]), on m's device, in m's dtype.
void check_row_vector(const char* op, const Tensor& m, const Tensor& v) {
  check_same_device_dtype(op, m, v);
  if (m.ndim() != 2 || v.shape() != Shape{m.size(0)})
    throw Error(cat(op, ": expects [R, C] and [R], got ", m.describe(), " and ", v.describe()));
}

// out holds one value (a sum), on x's device, in x's dtype.
void check_scalar_out(const char* op, const Tensor& x, const Tensor& out) {
  check_same_device_dtype(op, x, out);
  if (out.numel() != 1) throw Error(cat(op, ": output ", out.describe(), " should hold one element"));
}
}  // namespace

void encoder_activate_(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count) {
  check_activations_and_column_vector("encoder_activate", f, bias);
  check_activations_and_column_vector("encoder_activate", f, col_sum);
  check_activations_and_column_vector("encoder_activate", f, col_count);
  SAE_KERNELS_FOR(f.device(), standard).encoder_activate(f, bias, col_sum, col_count);
}

void decoder_penalty_(Tensor& norms, Tensor& l1, Tensor& active, const Tensor& W_dec, const Tensor& col_sum,
                      const Tensor& col_count) {
  check_row_vector("decoder_penalty", W_dec, norms);
  check_row_vector("decoder_penalty", W_dec, col_sum);
  check_row_vector("decoder_penalty", W_dec, col_count);
  check_scalar_out("decoder_penalty", W_dec, l1);
  check_scalar_out("decoder_penalty", W_dec, active);
  SAE_KERNELS_FOR(W_dec.device(), standard).decoder_penalty(norms, l1, active, W_dec, col_sum, col_count);
}

void decoder_residual_(Tensor& x_hat, const Tensor& bias, const Tensor& target, Tensor& grad, Tensor& rec) {
  check_same_shape("decoder_residual", x_hat, target);
  check_same_shape("decoder_residual", x_hat, grad);
  if (x_hat.ndim() != 2) throw Error(cat("decoder_residual: expects [N, D], got ", x_hat.describe()));
  if (bias.defined()) check_rows_and_column_vector("decoder_residual", x_hat, bias);
  check_scalar_out("decoder_residual", x_hat, rec);
  if (x_hat.numel() > 0 && grad.raw() == x_hat.raw())
    throw Error("decoder_residual: grad must not be x_hat (both are written)");
  SAE_KERNELS_FOR(x_hat.device(), standard).decoder_residual(x_hat, bias, target, grad, rec);
}

void decoder_penalty_backward_(Tensor& grad_W_dec, const Tensor& W_dec, const Tensor& norms, const Tensor& col_sum,
                               double lambda) {
  check_same_shape("decoder_penalty_backward", grad_W_dec, W_dec);
  check_row_vector("decoder_penalty_backward", W_dec, norms);
  check_row_vector("decoder_penalty_backward", W_dec, col_sum);
  SAE_KERNELS_FOR(W_dec.device(), standard).decoder_penalty_backward(grad_W_dec, W_dec, norms, col_sum, lambda);
}

void encoder_backward_(Tensor& grad, const Tensor& f, const Tensor& norms, double lambda, Tensor& col_sum) {
  check_like_activations("encoder_backward", grad, f);
  check_activations_and_column_vector("encoder_backward", grad, norms);
  check_activations_and_column_vector("encoder_backward", grad, col_sum);
  SAE_KERNELS_FOR(f.device(), standard).encoder_backward(grad, f, norms, lambda, col_sum);
}

}  // namespace sae
