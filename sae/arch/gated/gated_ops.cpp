// The Gated SAE's kernel front-end and CPU table (see gated_kernels.h).
#include <initializer_list>

#include "sae/arch/gated/gated_kernels.h"
#include "sae/step/sae_ops.h"
#include "tensor/checks.h"

namespace sae {

const GatedKernelTable& gated_cpu_kernels() {
  static const GatedKernelTable table{GATED_KERNELS(SAE_CPU_KERNEL)};
  return table;
}

void gated_forward_(Tensor& f, Tensor& gate, const Tensor& pre, const Tensor& b_gate, const Tensor& b_mag,
                    const Tensor& r_mag, Tensor& col_count, Tensor& col_gate) {
  const char* op = "gated_forward";
  check_like_activations(op, f, pre);
  check_like_activations(op, gate, pre);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&b_gate, &b_mag, &r_mag, &col_count, &col_gate})
    check_activations_and_column_vector(op, pre, *t);
  SAE_KERNELS_FOR(pre.device(), gated).gated_forward(f, gate, pre, b_gate, b_mag, r_mag, col_count, col_gate);
}

void gated_backward_(Tensor& grad, const Tensor& grad_gate, const Tensor& pre, const Tensor& b_gate,
                     const Tensor& b_mag, const Tensor& r_mag, const Tensor& norms, double lambda, Tensor& grad_b_gate,
                     Tensor& grad_b_mag, Tensor& grad_r_mag) {
  const char* op = "gated_backward";
  check_like_activations(op, grad, pre);
  check_like_activations(op, grad_gate, pre);
  for (const Tensor* t :
       std::initializer_list<const Tensor*>{&b_gate, &b_mag, &r_mag, &norms, &grad_b_gate, &grad_b_mag, &grad_r_mag})
    check_activations_and_column_vector(op, pre, *t);
  SAE_KERNELS_FOR(pre.device(), gated).gated_backward(grad, grad_gate, pre, b_gate, b_mag, r_mag, norms, lambda, grad_b_gate,
                                               grad_b_mag, grad_r_mag);
}

}  // namespace sae
