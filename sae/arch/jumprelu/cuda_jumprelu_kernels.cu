// CUDA kernels of the JumpReLU SAE (jumprelu_kernels.h): one thread per column, rows in order (the
// CPU's order), element formulas in jumprelu_math.h, shared with cpu_jumprelu_kernels.cpp.
#include "sae/arch/jumprelu/jumprelu_kernels.h"
#include "sae/arch/jumprelu/jumprelu_math.h"
#include "tensor/cuda/common.cuh"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// f and grad stored as S (as on the CPU); pre stays T.
template <typename T, typename S>
__global__ void jumprelu_forward_kernel(S* f, T* pre, const T* bias, const T* log_threshold, const T* norms,
                                        JumpReluSettings c, T* col_count, T* col_a, T* col_b, int64_t rows,
                                        int64_t cols) {
  for (int64_t j = thread_index(); j < cols; j += grid_stride()) {
    const T theta = math_exp(log_threshold[j]), b = bias[j], n = norms[j];
    T count = T(0), a = T(0), below = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      const T P = pre[r * cols + j] + b;
      pre[r * cols + j] = P;
      const JumpReluForwardTerms<T> t = jumprelu_forward_element(P, theta, n, c.tanh, static_cast<T>(c.tanh_c));
      f[r * cols + j] = store_value<S>(t.f);
      count += t.on;
      a += t.penalty;
      below += t.below;
    }
    col_count[j] = count;
    col_a[j] = a;
    col_b[j] = below;
  }
}

template <typename T, typename S>
__global__ void jumprelu_backward_kernel(S* grad, const T* pre, const T* log_threshold, const T* norms,
                                         JumpReluSettings c, double lambda, T* grad_bias, T* grad_log_threshold, T* decoder_scale,
                                         int64_t rows, int64_t cols) {
  for (int64_t j = thread_index(); j < cols; j += grid_stride()) {
    const T theta = math_exp(log_threshold[j]), n = norms[j];
    T gb = T(0), gt = T(0), dec = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      const JumpReluBackwardTerms<T> t =
          jumprelu_backward_element(T(load_value(grad[r * cols + j])), pre[r * cols + j], theta, n, c, lambda);
      grad[r * cols + j] = store_value<S>(t.grad_pre);
      gb += t.grad_pre;
      gt += t.grad_theta;
      dec += t.decoder;
    }
    grad_bias[j] = gb;
    grad_log_threshold[j] = theta * gt;
    decoder_scale[j] = dec;
  }
}

}  // namespace

void jumprelu_forward_cuda(Tensor& f, Tensor& pre, const Tensor& bias, const Tensor& log_threshold, const Tensor& norms,
                           const JumpReluSettings& c, Tensor& col_count, Tensor& col_a, Tensor& col_b) {
  if (f.size(1) == 0) return;
  dispatch_compute_and_storage(f.dtype(), "jumprelu_forward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    jumprelu_forward_kernel<<<grid_for(f.size(1)), kBlock, 0, cuda_stream()>>>(
        f.data<S>(), pre.data<T>(), bias.data<T>(), log_threshold.data<T>(), norms.data<T>(), c, col_count.data<T>(),
        col_a.data<T>(), col_b.data<T>(), f.size(0), f.size(1));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void jumprelu_backward_cuda(Tensor& grad, const Tensor& pre, const Tensor& log_threshold, const Tensor& norms,
                            const JumpReluSettings& c, double lambda, Tensor& grad_bias,
                            Tensor& grad_log_threshold, Tensor& decoder_scale) {
  if (grad.size(1) == 0) return;
  dispatch_compute_and_storage(grad.dtype(), "jumprelu_backward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    jumprelu_backward_kernel<<<grid_for(grad.size(1)), kBlock, 0, cuda_stream()>>>(
        grad.data<S>(), pre.data<T>(), log_threshold.data<T>(), norms.data<T>(), c, lambda, grad_bias.data<T>(),
        grad_log_threshold.data<T>(), decoder_scale.data<T>(), grad.size(0), grad.size(1));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace sae

namespace sae {

const JumpReluKernelTable& jumprelu_cuda_kernels() {
  static const JumpReluKernelTable table{JUMPRELU_KERNELS(SAE_CUDA_KERNEL)};
  return table;
}

}  // namespace sae
