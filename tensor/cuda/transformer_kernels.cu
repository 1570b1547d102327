// CUDA kernels of the transformer ops (SAE_TRANSFORMER_KERNELS in tensor/op_list.h), each
// computing what its CPU twin (tensor/cpu/transformer_kernels.cpp) computes, in the same element
// expressions; sums are in double like the CPU's but in a warp's order, so results agree to
// rounding. No atomics: every output element has one writer, so results are deterministic.
//
//   embedding            grid-stride over out's elements
//   embedding_backward   one thread per column, walking the ids in order (as the CPU does)
//   layer_norm, softmax  one warp per row, double sums by warp shuffles
//   batched_matmul       cublas{S,D}gemmStridedBatched (the row-major trick of matmul_cuda); at
//                        --precision bf16 cublasGemmStridedBatchedEx on bfloat16 copies
//   attention_mask       grid-stride over the scores
//   swap_axes01          grid-stride over out's elements
//   rotary               grid-stride over the rows' (j, j + R) pairs and the copied columns
//   rms_norm             one warp per row, double sums by warp shuffles
//   glu, glu_backward    grid-stride over the [N, F] elements
//   soft_cap             grid-stride over the elements
// Letters: N rows, D row width, B batch, Tq queries, Tk keys.
#include <climits>
#include <cmath>
#include <type_traits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/transformer_kernels.h"
#include "tensor/dispatch.h"
#include "tensor/element_math.h"
#include "tensor/host_device.h"

namespace sae {

namespace {

constexpr int kWarpsPerBlock = kBlock / 32;

// Every lane ends with the sum of the warp's values (xor butterfly).
__device__ inline double warp_sum(double value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <typename T>
__device__ inline T warp_max(T value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, value, offset);
    value = other > value ? other : value;
  }
  return value;
}

// First warp of this thread and the number of warps in the grid, for warp-per-row loops.
__device__ inline int64_t warp_index() { return (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; }
__device__ inline int64_t warp_count() { return int64_t(gridDim.x) * blockDim.x / 32; }

// ---------------------------------------------------------------- embedding

template <typename Out, typename T>
__global__ void embedding_kernel(Out* out, const T* table, const int32_t* ids, int64_t n, int64_t d) {
  for (int64_t i = thread_index(); i < n * d; i += grid_stride())
    out[i] = convert_element<Out>(table[int64_t(ids[i / d]) * d + i % d]);
}

template <typename T>
__global__ void embedding_backward_kernel(T* table_grad, const T* grad, const int32_t* ids, int64_t n, int64_t d) {
  for (int64_t c = thread_index(); c < d; c += grid_stride())
    for (int64_t i = 0; i < n; ++i) table_grad[int64_t(ids[i]) * d + c] += grad[i * d + c];
}

// ---------------------------------------------------------------- layer norm, softmax

template <typename T>
__global__ void layer_norm_kernel(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t n,
                                  int64_t d, double eps) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = warp_index(); r < n; r += warp_count()) {
    const T* row = x + r * d;
    double sum = 0.0;
    for (int64_t j = lane; j < d; j += 32) sum += row[j];
    const double mu = warp_sum(sum) / static_cast<double>(d);
    double squares = 0.0;
    for (int64_t j = lane; j < d; j += 32) {
      const double centred = row[j] - mu;
      squares += centred * centred;
    }
    const double inv = 1.0 / sqrt(warp_sum(squares) / static_cast<double>(d) + eps);
    const T m = static_cast<T>(mu), s = static_cast<T>(inv);
    T* dst = out + r * d;
    for (int64_t j = lane; j < d; j += 32) dst[j] = (row[j] - m) * s * weight[j] + bias[j];
    if (lane == 0) {
      mean[r] = m;
      rstd[r] = s;
    }
  }
}

template <typename T>
__global__ void softmax_kernel(T* out, const T* x, int64_t n, int64_t d) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = warp_index(); r < n; r += warp_count()) {
    const T* row = x + r * d;
    T* dst = out + r * d;
    T top = -INFINITY;
    for (int64_t j = lane; j < d; j += 32) top = row[j] > top ? row[j] : top;
    top = warp_max(top);
    double sum = 0.0;
    for (int64_t j = lane; j < d; j += 32) {
      const T e = row[j] == -INFINITY ? T(0) : math_exp(row[j] - top);
      dst[j] = e;
      sum += e;
    }
    const T scale = static_cast<T>(1.0 / warp_sum(sum));
    for (int64_t j = lane; j < d; j += 32) dst[j] *= scale;
  }
}

// ---------------------------------------------------------------- mask, swap, scale

template <typename T>
__global__ void attention_mask_kernel(T* out, const T* scores, int64_t batch, int64_t tq, int64_t tk, int64_t window,
                                      T masked) {
  for (int64_t i = thread_index(); i < batch * tq * tk; i += grid_stride()) {
    const int64_t j = i % tk, p = tk - tq + (i / tk) % tq;
    const bool keep = j <= p && (window == 0 || p - j < window);
    out[i] = keep ? scores[i] : masked;
  }
}

template <typename T>
__global__ void swap_axes01_kernel(T* out, const T* x, int64_t a, int64_t b, int64_t c) {
  for (int64_t i = thread_index(); i < a * b * c; i += grid_stride()) {
    const int64_t k = i % c, row = i / c;  // out row (j, i0) = row j * a + i0
    const int64_t i0 = row % a, j = row / a;
    out[i] = x[(i0 * b + j) * c + k];
  }
}

// Index i < B T R: one rotated pair; B T R <= i < B T (R + D - 2R): one copied column.
template <typename T>
__global__ void rotary_kernel(T* out, const T* x, const T* cos, const T* sin, int64_t batch, int64_t t, int64_t d,
                              int64_t r) {
  const int64_t pairs = batch * t * r, rest = d - 2 * r, total = pairs + batch * t * rest;
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    if (i < pairs) {
      const int64_t j = i % r, row = i / r;
      const T x1 = x[row * d + j], x2 = x[row * d + j + r];
      const T c = cos[(row % t) * r + j], s = sin[(row % t) * r + j];
      out[row * d + j] = x1 * c - x2 * s;
      out[row * d + j + r] = x2 * c + x1 * s;
    } else {
      const int64_t k = i - pairs, row = k / rest, j = 2 * r + k % rest;
      out[row * d + j] = x[row * d + j];
    }
  }
}

template <typename T>
__global__ void rms_norm_kernel(T* out, T* rstd, const T* x, const T* weight, int64_t n, int64_t d, double eps) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = warp_index(); r < n; r += warp_count()) {
    const T* row = x + r * d;
    double squares = 0.0;
    for (int64_t j = lane; j < d; j += 32) squares += double(row[j]) * double(row[j]);
    const T s = static_cast<T>(1.0 / sqrt(warp_sum(squares) / static_cast<double>(d) + eps));
    T* dst = out + r * d;
    for (int64_t j = lane; j < d; j += 32) dst[j] = (row[j] * s) * weight[j];
    if (lane == 0) rstd[r] = s;
  }
}

template <typename T>
__global__ void glu_kernel(T* out, const T* x, int64_t n, int64_t f, GluActivation act) {
  for (int64_t i = thread_index(); i < n * f; i += grid_stride()) {
    const int64_t r = i / f, j = i % f;
    const T gate = x[r * 2 * f + j], up = x[r * 2 * f + f + j];
    out[i] = glu_gate(act, gate) * up;
  }
}

template <typename T>
__global__ void glu_backward_kernel(T* grad_x, const T* x, const T* grad, int64_t n, int64_t f, GluActivation act) {
  for (int64_t i = thread_index(); i < n * f; i += grid_stride()) {
    const int64_t r = i / f, j = i % f;
    const T gate = x[r * 2 * f + j], up = x[r * 2 * f + f + j], g = grad[i];
    grad_x[r * 2 * f + j] = g * up * glu_gate_derivative(act, gate);
    grad_x[r * 2 * f + f + j] = g * glu_gate(act, gate);
  }
}

template <typename T>
__global__ void soft_cap_kernel(T* out, const T* x, int64_t n, T cap) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = math_tanh(x[i] / cap) * cap;
}

template <typename T>
__global__ void scale_kernel(T* out, int64_t n, T beta) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = beta == T(0) ? T(0) : beta * out[i];
}

}  // namespace

void embedding_cuda(Tensor& out, const Tensor& table, const Tensor& ids) {
  const int64_t n = ids.numel(), d = table.size(1);
  if (n * d == 0) return;
  dispatch_storage(table.dtype(), "embedding", [&](auto zero) {
    using T = decltype(zero);
    if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Float16>)  // widened into float32 rows
      embedding_kernel<<<grid_for(n * d), kBlock, 0, cuda_stream()>>>(out.data<float>(), table.data<T>(),
                                                                      ids.data<int32_t>(), n, d);
    else
      embedding_kernel<<<grid_for(n * d), kBlock, 0, cuda_stream()>>>(out.data<T>(), table.data<T>(),
                                                                      ids.data<int32_t>(), n, d);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void embedding_backward_cuda(Tensor& table_grad, const Tensor& grad, const Tensor& ids) {
  const int64_t n = ids.numel(), d = table_grad.size(1);
  if (n * d == 0) return;
  dispatch_float(grad.dtype(), "embedding_backward", [&](auto zero) {
    using T = decltype(zero);
    embedding_backward_kernel<<<grid_for(d), kBlock, 0, cuda_stream()>>>(table_grad.data<T>(), grad.data<T>(),
                                                                         ids.data<int32_t>(), n, d);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void layer_norm_cuda(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& weight,
                     const Tensor& bias, double eps) {
  const int64_t d = x.size(-1), n = d == 0 ? 0 : x.numel() / d;
  if (n == 0) return;
  dispatch_float(x.dtype(), "layer_norm", [&](auto zero) {
    using T = decltype(zero);
    layer_norm_kernel<<<grid_for(n, kWarpsPerBlock), kBlock, 0, cuda_stream()>>>(
        out.data<T>(), mean.data<T>(), rstd.data<T>(), x.data<T>(), weight.data<T>(), bias.data<T>(), n, d, eps);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void softmax_cuda(Tensor& out, const Tensor& x) {
  const int64_t d = x.size(-1), n = d == 0 ? 0 : x.numel() / d;
  if (n == 0) return;
  dispatch_float(x.dtype(), "softmax", [&](auto zero) {
    using T = decltype(zero);
    softmax_kernel<<<grid_for(n, kWarpsPerBlock), kBlock, 0, cuda_stream()>>>(out.data<T>(), x.data<T>(), n, d);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: operands swapped, m and n
// swapped, flags kept, leading dimensions the row-major row lengths (as matmul_cuda).
void batched_matmul_cuda(Tensor& out, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, double alpha,
                         double beta) {
  const int64_t batch = out.size(0), m = out.size(1), n = out.size(2), k = trans_a ? a.size(1) : a.size(2);
  if (batch == 0 || m == 0 || n == 0) return;
  if (k == 0) {  // the product is zero; out = beta * out (0 when beta == 0, even over NaN)
    dispatch_float(out.dtype(), "batched_matmul", [&](auto zero) {
      using T = decltype(zero);
      scale_kernel<<<grid_for(out.numel()), kBlock, 0, cuda_stream()>>>(out.data<T>(), out.numel(),
                                                                         static_cast<T>(beta));
    });
    SAE_CUDA_CHECK_LAUNCH();
    return;
  }
  if (batch > INT_MAX || m > INT_MAX || n > INT_MAX || k > INT_MAX || a.size(2) > INT_MAX || b.size(2) > INT_MAX)
    throw Error(cat("batched_matmul (cuda): ", a.describe(), " @ ", b.describe(), " exceeds cuBLAS's 32-bit sizes"));
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int lda = static_cast<int>(a.size(2)), ldb = static_cast<int>(b.size(2)), ldc = ni;
  const long long stride_a = a.size(1) * a.size(2), stride_b = b.size(1) * b.size(2), stride_c = m * n;
  const int count = static_cast<int>(batch);
  const Precision precision = out.dtype() == DType::F32 ? matmul_precision() : Precision::FP32;
  cublasHandle_t handle = cublas_handle_for(precision);
  if (out.dtype() == DType::F32 && precision == Precision::BF16) {
    const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
    Bf16Operand a16(a), b16(b);
    SAE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle, op_b, op_a, ni, mi, ki, &alpha_f, b16.data(), CUDA_R_16BF, ldb,
                                                stride_b, a16.data(), CUDA_R_16BF, lda, stride_a, &beta_f,
                                                out.data<float>(), CUDA_R_32F, ldc, stride_c, count, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT));
  } else if (out.dtype() == DType::F32) {
    const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
    SAE_CUBLAS_CHECK(cublasSgemmStridedBatched(handle, op_b, op_a, ni, mi, ki, &alpha_f, b.data<float>(), ldb,
                                               stride_b, a.data<float>(), lda, stride_a, &beta_f, out.data<float>(),
                                               ldc, stride_c, count));
  } else {
    SAE_CUBLAS_CHECK(cublasDgemmStridedBatched(handle, op_b, op_a, ni, mi, ki, &alpha, b.data<double>(), ldb,
                                               stride_b, a.data<double>(), lda, stride_a, &beta, out.data<double>(),
                                               ldc, stride_c, count));
  }
}

void attention_mask_cuda(Tensor& out, const Tensor& scores, int64_t window, double masked_value) {
  const int64_t batch = scores.size(0), tq = scores.size(1), tk = scores.size(2);
  if (batch * tq * tk == 0) return;
  dispatch_float(scores.dtype(), "attention_mask", [&](auto zero) {
    using T = decltype(zero);
    attention_mask_kernel<<<grid_for(batch * tq * tk), kBlock, 0, cuda_stream()>>>(
        out.data<T>(), scores.data<T>(), batch, tq, tk, window, static_cast<T>(masked_value));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void swap_axes01_cuda(Tensor& out, const Tensor& x) {
  const int64_t a = x.size(0), b = x.size(1), c = x.size(2);
  if (a * b * c == 0) return;
  dispatch_float(x.dtype(), "swap_axes01", [&](auto zero) {
    using T = decltype(zero);
    swap_axes01_kernel<<<grid_for(a * b * c), kBlock, 0, cuda_stream()>>>(out.data<T>(), x.data<T>(), a, b, c);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void rotary_cuda(Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  const int64_t batch = x.size(0), t = x.size(1), d = x.size(2), r = cos.size(1);
  const int64_t total = batch * t * (d - r);
  if (total == 0) return;
  dispatch_float(x.dtype(), "rotary", [&](auto zero) {
    using T = decltype(zero);
    rotary_kernel<<<grid_for(total), kBlock, 0, cuda_stream()>>>(out.data<T>(), x.data<T>(), cos.data<T>(),
                                                                 sin.data<T>(), batch, t, d, r);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void rms_norm_cuda(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& weight, double eps) {
  const int64_t d = x.size(-1), n = d == 0 ? 0 : x.numel() / d;
  if (n == 0) return;
  dispatch_float(x.dtype(), "rms_norm", [&](auto zero) {
    using T = decltype(zero);
    rms_norm_kernel<<<grid_for(n, kWarpsPerBlock), kBlock, 0, cuda_stream()>>>(
        out.data<T>(), rstd.data<T>(), x.data<T>(), weight.data<T>(), n, d, eps);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void glu_cuda(Tensor& out, const Tensor& x, GluActivation act) {
  const int64_t n = out.size(0), f = out.size(1);
  if (n * f == 0) return;
  dispatch_float(x.dtype(), "glu", [&](auto zero) {
    using T = decltype(zero);
    glu_kernel<<<grid_for(n * f), kBlock, 0, cuda_stream()>>>(out.data<T>(), x.data<T>(), n, f, act);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void glu_backward_cuda(Tensor& grad_x, const Tensor& x, const Tensor& grad, GluActivation act) {
  const int64_t n = grad.size(0), f = grad.size(1);
  if (n * f == 0) return;
  dispatch_float(x.dtype(), "glu_backward", [&](auto zero) {
    using T = decltype(zero);
    glu_backward_kernel<<<grid_for(n * f), kBlock, 0, cuda_stream()>>>(grad_x.data<T>(), x.data<T>(), grad.data<T>(),
                                                                       n, f, act);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void soft_cap_cuda(Tensor& out, const Tensor& x, double cap) {
  const int64_t n = x.numel();
  if (n == 0) return;
  dispatch_float(x.dtype(), "soft_cap", [&](auto zero) {
    using T = decltype(zero);
    soft_cap_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(out.data<T>(), x.data<T>(), n, static_cast<T>(cap));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace sae
