// The standard SAE's kernel front-end and CPU table (see standard_kernels.h).
#include "sae/arch/standard/standard_kernels.h"
#include "sae/step/sae_ops.h"
#include "tensor/checks.h"

namespace sae {

const StandardKernelTable& standard_cpu_kernels() {
  static const StandardKernelTable table{STANDARD_KERNELS(SAE_CPU_KERNEL)};
  return table;
}

void encoder_activate_(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count) {
  check_rows_and_column_vector("encoder_activate", f, bias);
  check_rows_and_column_vector("encoder_activate", f, col_sum);
  check_rows_and_column_vector("encoder_activate", f, col_count);
  SAE_KERNELS_FOR(f.device(), standard).encoder_activate(f, bias, col_sum, col_count);
}

void encoder_backward_(Tensor& grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum) {
  check_same_shape("encoder_backward", grad, f);
  check_rows_and_column_vector("encoder_backward", grad, row_add);
  check_rows_and_column_vector("encoder_backward", grad, col_sum);
  SAE_KERNELS_FOR(f.device(), standard).encoder_backward(grad, f, row_add, col_sum);
}

}  // namespace sae
