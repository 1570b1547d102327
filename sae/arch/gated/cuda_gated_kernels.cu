// CUDA kernels of the Gated SAE (gated_kernels.h): one thread per column, rows in order (the CPU's
// order), element formulas in gated_math.h, shared with cpu_gated_kernels.cpp.
#include "sae/arch/gated/gated_kernels.h"
#include "sae/arch/gated/gated_math.h"
#include "tensor/cuda/common.cuh"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// The [N, F] buffers stored as S (as on the CPU).
template <typename T, typename S>
__global__ void gated_forward_kernel(S* f, S* gate, const S* pre, const T* b_gate, const T* b_mag, const T* r_mag,
                                     T* col_count, T* col_gate, int64_t rows, int64_t cols) {
  for (int64_t j = thread_index(); j < cols; j += grid_stride()) {
    const T exp_r = math_exp(r_mag[j]), bg = b_gate[j], bm = b_mag[j];
    T count = T(0), gates = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      const GatedForwardTerms<T> t = gated_forward_element(T(load_value(pre[r * cols + j])), bg, bm, exp_r);
      f[r * cols + j] = store_value<S>(t.f);
      gate[r * cols + j] = store_value<S>(t.gate);
      count += t.f > T(0) ? T(1) : T(0);
      gates += t.gate;
    }
    col_count[j] = count;
    col_gate[j] = gates;
  }
}

template <typename T, typename S>
__global__ void gated_backward_kernel(S* grad, const S* grad_gate, const S* pre, const T* b_gate, const T* b_mag,
                                      const T* r_mag, const T* norms, T lambda, T* grad_b_gate, T* grad_b_mag,
                                      T* grad_r_mag, int64_t rows, int64_t cols) {
  for (int64_t j = thread_index(); j < cols; j += grid_stride()) {
    const T exp_r = math_exp(r_mag[j]), bg = b_gate[j], bm = b_mag[j], lambda_n = lambda * norms[j];
    T sum_gate = T(0), sum_mag = T(0), sum_r = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      const T Q = load_value(pre[r * cols + j]);
      const GatedBackwardTerms<T> t = gated_backward_element(T(load_value(grad[r * cols + j])),
                                                             T(load_value(grad_gate[r * cols + j])), Q, bg, bm, exp_r,
                                                             lambda_n);
      grad[r * cols + j] = store_value<S>(t.grad_gate + t.grad_mag * exp_r);
      sum_gate += t.grad_gate;
      sum_mag += t.grad_mag;
      sum_r += t.grad_mag * Q;
    }
    grad_b_gate[j] = sum_gate;
    grad_b_mag[j] = sum_mag;
    grad_r_mag[j] = exp_r * sum_r;
  }
}

}  // namespace

void gated_forward_cuda(Tensor& f, Tensor& gate, const Tensor& pre, const Tensor& b_gate, const Tensor& b_mag,
                        const Tensor& r_mag, Tensor& col_count, Tensor& col_gate) {
  if (f.size(1) == 0) return;
  dispatch_compute_and_storage(f.dtype(), "gated_forward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    gated_forward_kernel<<<grid_for(f.size(1)), kBlock, 0, cuda_stream()>>>(
        f.data<S>(), gate.data<S>(), pre.data<S>(), b_gate.data<T>(), b_mag.data<T>(), r_mag.data<T>(),
        col_count.data<T>(), col_gate.data<T>(), f.size(0), f.size(1));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void gated_backward_cuda(Tensor& grad, const Tensor& grad_gate, const Tensor& pre, const Tensor& b_gate,
                         const Tensor& b_mag, const Tensor& r_mag, const Tensor& norms, double lambda,
                         Tensor& grad_b_gate, Tensor& grad_b_mag, Tensor& grad_r_mag) {
  if (grad.size(1) == 0) return;
  dispatch_compute_and_storage(grad.dtype(), "gated_backward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    gated_backward_kernel<<<grid_for(grad.size(1)), kBlock, 0, cuda_stream()>>>(
        grad.data<S>(), grad_gate.data<S>(), pre.data<S>(), b_gate.data<T>(), b_mag.data<T>(), r_mag.data<T>(),
        norms.data<T>(), static_cast<T>(lambda), grad_b_gate.data<T>(), grad_b_mag.data<T>(), grad_r_mag.data<T>(),
        grad.size(0), grad.size(1));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace sae

namespace sae {

const GatedKernelTable& gated_cuda_kernels() {
  static const GatedKernelTable table{GATED_KERNELS(SAE_CUDA_KERNEL)};
  return table;
}

}  // namespace sae
