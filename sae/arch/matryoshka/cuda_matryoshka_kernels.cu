// CUDA kernel of the Matryoshka unit (matryoshka_kernels.h), computing what its CPU twin in
// cpu_matryoshka_kernels.cpp computes: one thread per token row counts its entries per group (a run
// of its feature-ordered entries), one block turns the counts into offsets in (group, token) order,
// and one thread per token row copies its entries. No arithmetic on values: the lists are the CPU's.
#include "sae/arch/matryoshka/matryoshka_kernels.h"
#include "sae/step/cuda_block.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/dispatch.h"

namespace sae {

namespace {

__global__ void level_counts_kernel(int32_t* counts, const int32_t* row_ptr, const int32_t* cols,
                                    const int32_t* widths, int64_t m, int64_t n, int64_t aux_rows) {
  for (int64_t r = thread_index(); r < n + aux_rows; r += grid_stride()) {
    if (r >= n) {
      counts[m * n + (r - n)] = row_ptr[r + 1] - row_ptr[r];
      continue;
    }
    int32_t e = row_ptr[r];
    for (int64_t g = 0; g < m; ++g) {
      const int32_t start = e;
      while (e < row_ptr[r + 1] && cols[e] < widths[g]) ++e;
      counts[g * n + r] = e - start;
    }
  }
}

template <typename T>
__global__ void level_copy_kernel(int32_t* out_cols, T* out_vals, const int32_t* out_ptr, const int32_t* row_ptr,
                                  const int32_t* cols, const T* vals, int64_t m, int64_t n, int64_t aux_rows) {
  for (int64_t r = thread_index(); r < n + aux_rows; r += grid_stride()) {
    int32_t e = row_ptr[r];
    if (r >= n) {
      for (int32_t at = out_ptr[m * n + (r - n)]; at < out_ptr[m * n + (r - n) + 1]; ++at, ++e) {
        out_cols[at] = cols[e];
        out_vals[at] = vals[e];
      }
      continue;
    }
    for (int64_t g = 0; g < m; ++g)
      for (int32_t at = out_ptr[g * n + r]; at < out_ptr[g * n + r + 1]; ++at, ++e) {
        out_cols[at] = cols[e];
        out_vals[at] = vals[e];
      }
  }
}

}  // namespace

void matryoshka_levels_cuda(SparseFeatures& levels, const SparseFeatures& tokens, const Tensor& widths, int64_t n,
                            int64_t aux_rows) {
  const int64_t m = widths.numel(), rows_in = n + aux_rows, rows_out = m * n + aux_rows;
  DeviceBuffer counts(static_cast<size_t>(std::max<int64_t>(rows_out, 1)) * sizeof(int32_t));
  int32_t* count = static_cast<int32_t*>(counts.ptr);
  if (rows_in > 0) {
    level_counts_kernel<<<grid_for(rows_in), kBlock, 0, cuda_stream()>>>(
        count, tokens.row_ptr.data<int32_t>(), tokens.cols.data<int32_t>(), widths.data<int32_t>(), m, n, aux_rows);
    SAE_CUDA_CHECK_LAUNCH();
  }
  offsets_from_counts_kernel<<<1, kBlock, 0, cuda_stream()>>>(levels.row_ptr.data<int32_t>(), count, rows_out, true);
  SAE_CUDA_CHECK_LAUNCH();
  if (rows_in == 0) return;
  dispatch_float(tokens.row_vals.dtype(), "matryoshka_levels", [&](auto zero) {
    using T = decltype(zero);
    level_copy_kernel<<<grid_for(rows_in), kBlock, 0, cuda_stream()>>>(
        levels.cols.data<int32_t>(), levels.row_vals.data<T>(), levels.row_ptr.data<int32_t>(),
        tokens.row_ptr.data<int32_t>(), tokens.cols.data<int32_t>(), tokens.row_vals.data<T>(), m, n, aux_rows);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

const MatryoshkaKernelTable& matryoshka_cuda_kernels() {
  static const MatryoshkaKernelTable table{MATRYOSHKA_KERNELS(SAE_CUDA_KERNEL)};
  return table;
}

}  // namespace sae
