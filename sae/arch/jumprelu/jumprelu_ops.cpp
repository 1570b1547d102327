// The JumpReLU SAE's kernel front-end and CPU table (see jumprelu_kernels.h).
#include <initializer_list>

#include "sae/arch/jumprelu/jumprelu_kernels.h"
#include "sae/step/sae_ops.h"
#include "tensor/checks.h"

namespace sae {

const JumpReluKernelTable& jumprelu_cpu_kernels() {
  static const JumpReluKernelTable table{JUMPRELU_KERNELS(SAE_CPU_KERNEL)};
  return table;
}

namespace {
// f or grad [N, F] of pre: its shape and device, in pre's dtype or in bf16 for a float32 pre.
void check_activations_of(const char* op, const Tensor& a, const Tensor& pre) {
  const bool dtype_ok = a.dtype() == pre.dtype() || (a.dtype() == DType::BF16 && pre.dtype() == DType::F32);
  if (!a.defined() || a.shape() != pre.shape() || a.device() != pre.device() || !dtype_ok)
    throw Error(cat(op, ": ", a.describe(), " does not go with pre ", pre.describe()));
}
}  // namespace

void jumprelu_forward_(Tensor& f, Tensor& pre, const Tensor& bias, const Tensor& log_threshold, const Tensor& norms,
                       const JumpReluSettings& c, Tensor& col_count, Tensor& col_a, Tensor& col_b) {
  const char* op = "jumprelu_forward";
  check_float(op, pre);
  check_rows_and_column_vector(op, pre, bias);
  check_activations_of(op, f, pre);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&log_threshold, &norms, &col_count, &col_a, &col_b})
    check_rows_and_column_vector(op, pre, *t);
  if (!(c.bandwidth > 0)) throw Error(cat(op, ": bandwidth must be > 0, got ", c.bandwidth));
  SAE_KERNELS_FOR(pre.device(), jumprelu).jumprelu_forward(f, pre, bias, log_threshold, norms, c, col_count, col_a,
                                                           col_b);
}

void jumprelu_backward_(Tensor& grad, const Tensor& pre, const Tensor& log_threshold, const Tensor& norms,
                        const JumpReluSettings& c, double lambda, Tensor& grad_bias, Tensor& grad_log_threshold,
                        Tensor& decoder_scale) {
  const char* op = "jumprelu_backward";
  check_float(op, pre);
  check_activations_of(op, grad, pre);
  for (const Tensor* t :
       std::initializer_list<const Tensor*>{&log_threshold, &norms, &grad_bias, &grad_log_threshold, &decoder_scale})
    check_rows_and_column_vector(op, pre, *t);
  if (!(c.bandwidth > 0)) throw Error(cat(op, ": bandwidth must be > 0, got ", c.bandwidth));
  SAE_KERNELS_FOR(pre.device(), jumprelu).jumprelu_backward(grad, pre, log_threshold, norms, c, lambda, grad_bias,
                                                            grad_log_threshold, decoder_scale);
}

}  // namespace sae
