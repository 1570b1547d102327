// CPU kernels of the JumpReLU SAE (jumprelu_kernels.h): one pass over [N, F] forward and one
// backward, element formulas in jumprelu_math.h (shared with the CUDA kernels). Threads split the F
// columns, each column summed in row order by one thread.
#include <omp.h>

#include <cmath>
#include <vector>

#include "sae/arch/jumprelu/jumprelu_kernels.h"
#include "sae/arch/jumprelu/jumprelu_math.h"
#include "sae/step/cpu_helpers.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// f and grad stored as S (T, or bf16 with T float32: tensor/half.h); pre (P) stays T.
template <typename T, typename S>
void jumprelu_forward_typed(S* f, T* pre, const T* bias, const T* log_threshold, const T* norms,
                            const JumpReluSettings& c, T* col_count, T* col_a, T* col_b, int64_t rows, int64_t cols) {
  const T tanh_c = static_cast<T>(c.tanh_c);
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_THREAD_COLUMNS(cols)
    std::vector<T> theta(j1 - j0);
    for (int64_t j = j0; j < j1; ++j) {
      theta[j - j0] = math_exp(log_threshold[j]);
      col_count[j] = col_a[j] = col_b[j] = T(0);
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = j0; j < j1; ++j) {
        const T P = pre[r * cols + j] + bias[j];
        pre[r * cols + j] = P;
        const JumpReluForwardTerms<T> t = jumprelu_forward_element(P, theta[j - j0], norms[j], c.tanh, tanh_c);
        f[r * cols + j] = store_value<S>(t.f);
        col_count[j] += t.on;
        col_a[j] += t.penalty;
        col_b[j] += t.below;
      }
  }
}

template <typename T, typename S>
void jumprelu_backward_typed(S* grad, const T* pre, const T* log_threshold, const T* norms, const JumpReluSettings& c,
                             double lambda, T* grad_bias, T* grad_log_threshold, T* decoder_scale, int64_t rows, int64_t cols) {
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_THREAD_COLUMNS(cols)
    std::vector<T> theta(j1 - j0), grad_theta(j1 - j0, T(0));
    for (int64_t j = j0; j < j1; ++j) {
      theta[j - j0] = math_exp(log_threshold[j]);
      grad_bias[j] = decoder_scale[j] = T(0);
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = j0; j < j1; ++j) {
        const JumpReluBackwardTerms<T> t =
            jumprelu_backward_element(T(load_value(grad[r * cols + j])), pre[r * cols + j], theta[j - j0], norms[j], c,
                                      lambda);
        grad[r * cols + j] = store_value<S>(t.grad_pre);
        grad_bias[j] += t.grad_pre;
        grad_theta[j - j0] += t.grad_theta;
        decoder_scale[j] += t.decoder;
      }
    for (int64_t j = j0; j < j1; ++j) grad_log_threshold[j] = theta[j - j0] * grad_theta[j - j0];
  }
}

}  // namespace

void jumprelu_forward_cpu(Tensor& f, Tensor& pre, const Tensor& bias, const Tensor& log_threshold, const Tensor& norms,
                          const JumpReluSettings& c, Tensor& col_count, Tensor& col_a, Tensor& col_b) {
  dispatch_compute_and_storage(f.dtype(), "jumprelu_forward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    jumprelu_forward_typed(f.data<S>(), pre.data<T>(), bias.data<T>(), log_threshold.data<T>(), norms.data<T>(), c,
                           col_count.data<T>(), col_a.data<T>(), col_b.data<T>(), f.size(0), f.size(1));
  });
}

void jumprelu_backward_cpu(Tensor& grad, const Tensor& pre, const Tensor& log_threshold, const Tensor& norms,
                           const JumpReluSettings& c, double lambda, Tensor& grad_bias,
                           Tensor& grad_log_threshold, Tensor& decoder_scale) {
  dispatch_compute_and_storage(grad.dtype(), "jumprelu_backward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    jumprelu_backward_typed(grad.data<S>(), pre.data<T>(), log_threshold.data<T>(), norms.data<T>(), c,
                            lambda, grad_bias.data<T>(), grad_log_threshold.data<T>(), decoder_scale.data<T>(), grad.size(0),
                            grad.size(1));
  });
}

}  // namespace sae
