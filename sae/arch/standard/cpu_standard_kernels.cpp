// CPU kernels of the standard SAE (standard_kernels.h): the dense step's fused passes. Each does the
// float operations of the op sequence it replaces, in the same order (the step's results are those
// of the unfused ops bit for bit): element-wise work in plain loops (the build never contracts a*b+c,
// so an expression rounds as the op's does), and every reduction through the tensor library's own CPU
// kernels (cpu_kernels(): the same double accumulation in the same chunks as reduce_all_ and
// reduce_axis_). encoder_activate and encoder_backward split the F columns of f [N, F] over threads,
// so each column's sum is accumulated by one thread in row order (deterministic, no combining step).
// Those two also take f and its gradient stored as bfloat16 (the step's activations at --precision
// bf16): read widened, computed in float32, written rounded to nearest even.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "sae/arch/standard/standard_kernels.h"
#include "sae/step/cpu_helpers.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"
#include "tensor/op_list.h"

namespace sae {

namespace {

// f stored as S (T, or bf16 with T float32: tensor/half.h); the column sums and counts are of the
// values as stored, so that they agree with every later reader of f.
template <typename T, typename S>
void encoder_activate_typed(S* f, const T* bias, T* col_sum, T* col_count, int64_t rows, int64_t cols) {
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_THREAD_COLUMNS(cols)
    for (int64_t j = j0; j < j1; ++j) col_sum[j] = col_count[j] = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      S* row = f + r * cols;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        // Branch-free so that the loop vectorises: max for the ReLU, a 0/1 conversion for the count.
        const S stored = store_value<S>(std::max(load_value(row[j]) + bias[j], T(0)));
        row[j] = stored;
        const T v = load_value(stored);
        col_sum[j] += v;
        col_count[j] += static_cast<T>(v > T(0));
      }
    }
  }
}

// grad and f stored as S; col_sum sums the results before they are stored.
template <typename T, typename S>
void encoder_backward_typed(S* grad, const S* f, const T* norms, T lambda, T* col_sum, int64_t rows, int64_t cols) {
  // The L1 term's dLoss/df, lambda n_j, as affine_(row_add, norms, lambda, 0) computes it.
  thread_local std::vector<T> row_add_buffer;
  T* row_add = grow(row_add_buffer, static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) row_add[j] = lambda * norms[j] + T(0);
#pragma omp parallel if (rows * cols >= kParallelMin)
  {
    SAE_THREAD_COLUMNS(cols)
    for (int64_t j = j0; j < j1; ++j) col_sum[j] = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      S* g = grad + r * cols;
      const S* fr = f + r * cols;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        // (g + row_add) * mask, branch-free; like autograd's g * step(pre), a non-finite g stays non-finite.
        const T v = (load_value(g[j]) + row_add[j]) * static_cast<T>(load_value(fr[j]) > T(0));
        g[j] = store_value<S>(v);
        col_sum[j] += v;
      }
    }
  }
}

// x_hat += bias (none: nullptr); grad = x_hat - target (binary_ add then sub).
template <typename T>
void residual_typed(T* x_hat, const T* bias, const T* target, T* grad, int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    T* xr = x_hat + r * cols;
    const T* tr = target + r * cols;
    T* gr = grad + r * cols;
    if (bias)
      for (int64_t c = 0; c < cols; ++c) xr[c] = xr[c] + bias[c];
    for (int64_t c = 0; c < cols; ++c) gr[c] = xr[c] - tr[c];
  }
}

// grad_W_dec[i,:] += scale_i W_dec[i,:], scale_i as maximum, div and affine_ computed it.
template <typename T>
void penalty_backward_typed(T* grad, const T* W, const T* norms, const T* col_sum, T lambda, int64_t rows,
                            int64_t cols) {
  const T tiny = static_cast<T>(1e-30);
#pragma omp parallel for if (rows * cols >= kParallelMin)
  for (int64_t i = 0; i < rows; ++i) {
    const T floor = norms[i] > tiny ? norms[i] : tiny;
    const T scale = lambda * (col_sum[i] / floor) + T(0);
    T* g = grad + i * cols;
    const T* w = W + i * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) g[c] += scale * w[c];
  }
}

}  // namespace

void encoder_activate_cpu(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count) {
  dispatch_compute_and_storage(f.dtype(), "encoder_activate", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    encoder_activate_typed(f.data<S>(), bias.data<T>(), col_sum.data<T>(), col_count.data<T>(), f.size(0), f.size(1));
  });
}

void decoder_penalty_cpu(Tensor& norms, Tensor& l1, Tensor& active, const Tensor& W_dec, const Tensor& col_sum,
                         const Tensor& col_count) {
  const KernelTable& ops = cpu_kernels();
  ops.reduce_axis(ReduceOp::norm2, norms, W_dec, W_dec.size(0), W_dec.size(1), 1);
  // col_sum[i] norms[i], summed by reduce_all as the ops it replaced did. The scratch is kept per
  // thread, so that a step makes no tensor after its first (ArchStep.AStepWithPendingSums...).
  thread_local Tensor weighted;
  if (!weighted.defined() || weighted.shape() != norms.shape() || weighted.dtype() != norms.dtype())
    weighted = Tensor::empty(norms.shape(), norms.dtype());
  dispatch_float(W_dec.dtype(), "decoder_penalty", [&](auto zero) {
    using T = decltype(zero);
    T* w = weighted.data<T>();
    const T *s = col_sum.data<T>(), *n = norms.data<T>();
    for (int64_t i = 0; i < weighted.numel(); ++i) w[i] = s[i] * n[i];
  });
  ops.reduce_all(ReduceOp::sum, l1, weighted);
  ops.reduce_all(ReduceOp::sum, active, col_count);
}

void decoder_residual_cpu(Tensor& x_hat, const Tensor& bias, const Tensor& target, Tensor& grad, Tensor& rec) {
  dispatch_float(x_hat.dtype(), "decoder_residual", [&](auto zero) {
    using T = decltype(zero);
    residual_typed(x_hat.data<T>(), bias.defined() ? bias.data<T>() : nullptr, target.data<T>(), grad.data<T>(),
                   x_hat.size(0), x_hat.size(1));
  });
  const KernelTable& ops = cpu_kernels();
  ops.reduce_all(ReduceOp::sum_squares, rec, grad);  // rec = sum r^2, then grad = 2 r
  ops.affine(grad, grad, 2.0, 0.0);
}

void decoder_penalty_backward_cpu(Tensor& grad_W_dec, const Tensor& W_dec, const Tensor& norms, const Tensor& col_sum,
                                  double lambda) {
  dispatch_float(W_dec.dtype(), "decoder_penalty_backward", [&](auto zero) {
    using T = decltype(zero);
    penalty_backward_typed(grad_W_dec.data<T>(), W_dec.data<T>(), norms.data<T>(), col_sum.data<T>(),
                           static_cast<T>(lambda), W_dec.size(0), W_dec.size(1));
  });
}

void encoder_backward_cpu(Tensor& grad, const Tensor& f, const Tensor& norms, double lambda, Tensor& col_sum) {
  dispatch_compute_and_storage(f.dtype(), "encoder_backward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    encoder_backward_typed(grad.data<S>(), f.data<S>(), norms.data<T>(), static_cast<T>(lambda), col_sum.data<T>(),
                           f.size(0), f.size(1));
  });
}

}  // namespace sae
