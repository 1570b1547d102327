// CPU kernels of the standard SAE (standard_kernels.h): the dense step's fused passes over f
// [N, F]: bias + ReLU with each column's sum and count, and the backward through the ReLU with the
// L1 term and each column's sum. Threads split the F columns, so each column's sum is accumulated by
// one thread in row order (deterministic, no combining step).
#include <omp.h>

#include <algorithm>

#include "sae/arch/standard/standard_kernels.h"
#include "sae/step/cpu_helpers.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// ---- dense fused kernels. Threads split the F columns, so each column's sum is accumulated by one
// thread in row order (deterministic, no combining step).

template <typename T>
void encoder_activate_typed(T* f, const T* bias, T* col_sum, T* col_count, int64_t rows, int64_t cols) {
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_THREAD_COLUMNS(cols)
    for (int64_t j = j0; j < j1; ++j) col_sum[j] = col_count[j] = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      T* row = f + r * cols;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        // Branch-free so that the loop vectorises: max for the ReLU, a 0/1 conversion for the count.
        const T v = std::max(row[j] + bias[j], T(0));
        row[j] = v;
        col_sum[j] += v;
        col_count[j] += static_cast<T>(v > T(0));
      }
    }
  }
}

template <typename T>
void encoder_backward_typed(T* grad, const T* f, const T* row_add, T* col_sum, int64_t rows, int64_t cols) {
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_THREAD_COLUMNS(cols)
    for (int64_t j = j0; j < j1; ++j) col_sum[j] = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      T* g = grad + r * cols;
      const T* fr = f + r * cols;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        // (g + row_add) * mask, branch-free; like autograd's g * step(pre), a non-finite g stays non-finite.
        const T v = (g[j] + row_add[j]) * static_cast<T>(fr[j] > T(0));
        g[j] = v;
        col_sum[j] += v;
      }
    }
  }
}

}  // namespace

void encoder_activate_cpu(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count) {
  dispatch_float(f.dtype(), "encoder_activate", [&](auto zero) {
    using T = decltype(zero);
    encoder_activate_typed(f.data<T>(), bias.data<T>(), col_sum.data<T>(), col_count.data<T>(), f.size(0), f.size(1));
  });
}

void encoder_backward_cpu(Tensor& grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum) {
  dispatch_float(f.dtype(), "encoder_backward", [&](auto zero) {
    using T = decltype(zero);
    encoder_backward_typed(grad.data<T>(), f.data<T>(), row_add.data<T>(), col_sum.data<T>(), f.size(0), f.size(1));
  });
}

}  // namespace sae
