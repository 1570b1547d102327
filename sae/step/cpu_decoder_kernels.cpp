// CPU kernels of the decoder family (sae_kernels.h): rows scaled into a matrix (the decoder-norm
// terms of the gradients), and the unit-norm decoder's projection and normalisation (row formulas
// in decoder_math.h, shared with nothing else on the host). OpenMP across rows.
// Letters: F rows (latents), D columns.
#include <omp.h>

#include "sae/step/decoder_math.h"
#include "sae/step/kernel_decls.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"

namespace sae {

namespace {

template <typename T>
void add_scaled_rows_typed(T* out, const T* x, const T* scale, int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T s = scale[r];
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] += s * x[r * cols + c];
  }
}

// ---- unit-norm decoder, dense path ----

template <typename T>
void decoder_project_typed(T* grad, const T* W, const T* norms, int64_t rows, int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d >= kParallelMin)
  for (int64_t i = 0; i < rows; ++i) project_out_row(grad + i * d, W + i * d, norms[i], d);
}

template <typename T>
void decoder_normalize_typed(T* W, int64_t rows, int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d >= kParallelMin)
  for (int64_t i = 0; i < rows; ++i) normalize_row(W + i * d, d);
}

}  // namespace

void add_scaled_rows_cpu(Tensor& out, const Tensor& x, const Tensor& row_scale) {
  dispatch_float(x.dtype(), "add_scaled_rows", [&](auto zero) {
    using T = decltype(zero);
    add_scaled_rows_typed(out.data<T>(), x.data<T>(), row_scale.data<T>(), x.size(0), x.size(1));
  });
}

void decoder_project_cpu(Tensor& grad, const Tensor& W, const Tensor& norms) {
  dispatch_float(W.dtype(), "decoder_project", [&](auto zero) {
    using T = decltype(zero);
    decoder_project_typed(grad.data<T>(), W.data<T>(), norms.data<T>(), W.size(0), W.size(1));
  });
}

void decoder_normalize_cpu(Tensor& W) {
  dispatch_float(W.dtype(), "decoder_normalize", [&](auto zero) {
    using T = decltype(zero);
    decoder_normalize_typed(W.data<T>(), W.size(0), W.size(1));
  });
}

}  // namespace sae
