// CUDA kernels of the decoder family (sae_kernels.h), each computing what its CPU twin in
// cpu_decoder_kernels.cpp computes: rows scaled into a matrix (rows along grid y, columns coalesced),
// and the unit-norm decoder's projection and normalisation (one block per row, sums in double in a
// fixed order).
#include <algorithm>

#include "sae/step/cuda_block.cuh"
#include "sae/step/kernel_decls.h"
#include "tensor/cuda/common.cuh"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// out[r, :] += scale[r] * x[r, :]. Rows along grid y (the scale is read once per row), columns
// along grid x and the threads (coalesced). The expression is the CPU's: out + (s * x), unfused.
template <typename T>
__global__ void add_scaled_rows_kernel(T* out, const T* x, const T* scale, int64_t rows, int64_t cols) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T s = scale[r];
    T* out_row = out + r * cols;
    const T* x_row = x + r * cols;
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols; c += int64_t(blockDim.x) * gridDim.x)
      out_row[c] = out_row[c] + s * x_row[c];
  }
}

// ---- unit-norm decoder ----

template <typename T>
__global__ void decoder_project_kernel(T* grad, const T* W, const T* norms, int64_t rows, int64_t d) {
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    const T n = norms[i];
    if (!(n > T(0))) continue;  // uniform over the block
    T* g = grad + i * d;
    const T* w = W + i * d;
    double part = 0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) part += double(g[c]) * double(w[c] / n);
    const T along = static_cast<T>(block_sum(part));
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) g[c] = g[c] - along * (w[c] / n);
  }
}

template <typename T>
__global__ void decoder_normalize_kernel(T* W, int64_t rows, int64_t d) {
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    T* w = W + i * d;
    double part = 0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) part += double(w[c]) * double(w[c]);
    const T n = static_cast<T>(math_sqrt(block_sum(part)));
    if (n > T(0))
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) w[c] = w[c] / n;
  }
}

}  // namespace

void add_scaled_rows_cuda(Tensor& out, const Tensor& x, const Tensor& row_scale) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows == 0 || cols == 0) return;
  // Narrow rows get narrow blocks (a warp at least); grid y is limited to 65535, the loop covers more.
  const int threads = static_cast<int>(std::min<int64_t>(kBlock, ceil_div(cols, 32) * 32));
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(ceil_div(cols, threads), 1024)),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  dispatch_float(x.dtype(), "add_scaled_rows", [&](auto zero) {
    using T = decltype(zero);
    add_scaled_rows_kernel<<<grid, threads, 0, cuda_stream()>>>(out.data<T>(), x.data<T>(),
                                                                row_scale.data<T>(), rows, cols);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void decoder_project_cuda(Tensor& grad, const Tensor& W, const Tensor& norms) {
  if (W.size(0) == 0 || W.size(1) == 0) return;
  dispatch_float(W.dtype(), "decoder_project", [&](auto zero) {
    using T = decltype(zero);
    decoder_project_kernel<<<grid_for(W.size(0), 1), kBlock, 0, cuda_stream()>>>(
        grad.data<T>(), W.data<T>(), norms.data<T>(), W.size(0), W.size(1));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void decoder_normalize_cuda(Tensor& W) {
  if (W.size(0) == 0 || W.size(1) == 0) return;
  dispatch_float(W.dtype(), "decoder_normalize", [&](auto zero) {
    using T = decltype(zero);
    decoder_normalize_kernel<<<grid_for(W.size(0), 1), kBlock, 0, cuda_stream()>>>(W.data<T>(), W.size(0), W.size(1));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace sae
