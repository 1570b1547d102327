// CPU kernels of the Gated SAE (gated_kernels.h): one pass over [N, F] forward and one backward,
// element formulas in gated_math.h (shared with the CUDA kernels). Threads split the F columns, each
// column summed in row order by one thread.
#include <omp.h>

#include <cmath>
#include <vector>

#include "sae/arch/gated/gated_kernels.h"
#include "sae/arch/gated/gated_math.h"
#include "sae/step/cpu_helpers.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// The [N, F] buffers are stored as S (T, or bf16 with T float32: tensor/half.h); sums and counts are
// of the float32 values before they are stored.
template <typename T, typename S>
void gated_forward_typed(S* f, S* gate, const S* pre, const T* b_gate, const T* b_mag, const T* r_mag, T* col_count,
                         T* col_gate, int64_t rows, int64_t cols) {
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_THREAD_COLUMNS(cols)
    std::vector<T> exp_r(j1 - j0);
    for (int64_t j = j0; j < j1; ++j) {
      exp_r[j - j0] = math_exp(r_mag[j]);
      col_count[j] = col_gate[j] = T(0);
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = j0; j < j1; ++j) {
        const GatedForwardTerms<T> t =
            gated_forward_element(T(load_value(pre[r * cols + j])), b_gate[j], b_mag[j], exp_r[j - j0]);
        f[r * cols + j] = store_value<S>(t.f);
        gate[r * cols + j] = store_value<S>(t.gate);
        col_count[j] += t.f > T(0) ? T(1) : T(0);
        col_gate[j] += t.gate;
      }
  }
}

template <typename T, typename S>
void gated_backward_typed(S* grad, const S* grad_gate, const S* pre, const T* b_gate, const T* b_mag, const T* r_mag,
                          const T* norms, T lambda, T* grad_b_gate, T* grad_b_mag, T* grad_r_mag, int64_t rows,
                          int64_t cols) {
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_THREAD_COLUMNS(cols)
    std::vector<T> exp_r(j1 - j0), r_sum(j1 - j0, T(0));
    for (int64_t j = j0; j < j1; ++j) {
      exp_r[j - j0] = math_exp(r_mag[j]);
      grad_b_gate[j] = grad_b_mag[j] = T(0);
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = j0; j < j1; ++j) {
        const T Q = load_value(pre[r * cols + j]), e = exp_r[j - j0];
        const GatedBackwardTerms<T> t =
            gated_backward_element(T(load_value(grad[r * cols + j])), T(load_value(grad_gate[r * cols + j])), Q,
                                   b_gate[j], b_mag[j], e, lambda * norms[j]);
        grad[r * cols + j] = store_value<S>(t.grad_gate + t.grad_mag * e);
        grad_b_gate[j] += t.grad_gate;
        grad_b_mag[j] += t.grad_mag;
        r_sum[j - j0] += t.grad_mag * Q;
      }
    for (int64_t j = j0; j < j1; ++j) grad_r_mag[j] = exp_r[j - j0] * r_sum[j - j0];
  }
}

}  // namespace

void gated_forward_cpu(Tensor& f, Tensor& gate, const Tensor& pre, const Tensor& b_gate, const Tensor& b_mag,
                       const Tensor& r_mag, Tensor& col_count, Tensor& col_gate) {
  dispatch_compute_and_storage(f.dtype(), "gated_forward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    gated_forward_typed(f.data<S>(), gate.data<S>(), pre.data<S>(), b_gate.data<T>(), b_mag.data<T>(),
                        r_mag.data<T>(), col_count.data<T>(), col_gate.data<T>(), f.size(0), f.size(1));
  });
}

void gated_backward_cpu(Tensor& grad, const Tensor& grad_gate, const Tensor& pre, const Tensor& b_gate,
                        const Tensor& b_mag, const Tensor& r_mag, const Tensor& norms, double lambda,
                        Tensor& grad_b_gate, Tensor& grad_b_mag, Tensor& grad_r_mag) {
  dispatch_compute_and_storage(grad.dtype(), "gated_backward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    gated_backward_typed(grad.data<S>(), grad_gate.data<S>(), pre.data<S>(), b_gate.data<T>(), b_mag.data<T>(),
                         r_mag.data<T>(), norms.data<T>(), static_cast<T>(lambda), grad_b_gate.data<T>(),
                         grad_b_mag.data<T>(), grad_r_mag.data<T>(), grad.size(0), grad.size(1));
  });
}

}  // namespace sae
