// CUDA kernels of the standard SAE (standard_kernels.h), computing what their CPU twins in
// cpu_standard_kernels.cpp compute, to rounding: encoder_activate and encoder_backward make one pass
// over f [N, F] (N rows = tokens, F columns = features), rewriting it in place and summing every
// column.
#include <algorithm>

#include "sae/arch/standard/standard_kernels.h"
#include "tensor/cuda/common.cuh"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// ---------------------------------------------------------------- SAE fused kernels
//
// encoder_activate and encoder_backward make one pass over f [N, F] (N rows = tokens, F columns =
// features), rewriting it in place and summing every column, as their CPU references do.
//
// Layout: a block of 32 x 8 threads owns a tile of 32 neighbouring columns and one slice of rows.
// The 32 threads of a warp read 32 consecutive values of one row (coalesced); the block's 8 thread
// rows stride down the slice, each keeping its own running sum per column, and shared memory then
// adds the 8 thread rows in a fixed order. The column values are loaded once per thread (bias,
// row_add). Each thread issues kSaeUnroll loads before it uses any, so several are in flight.
//
// Slices: long columns (large N) are cut into `splits` slices of rows, so that enough blocks run
// to keep the memory system busy (N = 4096, F = 10000: 313 column tiles x 8 slices); each slice
// writes partial sums [splits, F] and a second kernel adds them in slice order. The number of
// slices depends on N alone, never on the GPU, so the results are bitwise repeatable from run to
// run and from one GPU model to another. No atomics anywhere.
//
// Column sums are accumulated in double and rounded to T once at the end (the CPU accumulates in T
// in row order: for float32 the two differ by the CPU's rounding, at most about N * 6e-8 of the sum
// of |values|). Counts are exact integers.
constexpr int kSaeColumns = 32, kSaeRowLanes = 8, kSaeUnroll = 4;
constexpr int64_t kSaeRowsPerSplit = 512;  // a slice holds at least this many rows (or all of them)
constexpr int64_t kSaeMaxSplits = 64;

int64_t sae_row_splits(int64_t rows) { return std::clamp<int64_t>(rows / kSaeRowsPerSplit, 1, kSaeMaxSplits); }

// Where the column sums of a block go: with one slice straight into the outputs (count may be
// null), otherwise into the partials [splits, cols].
template <typename T>
struct ColumnSumsOut {
  T* sum;
  T* count;
  double* partial_sum;
  long long* partial_count;
};

// Called by every thread of the block once per task (it synchronises). Thread (x, y) holds the
// running sum and count of column c over thread row y; the 8 thread rows are added in order 0..7.
template <typename T, bool kCount>
__device__ void store_column_sums(double sum, long long count, int64_t c, int64_t cols, int64_t split,
                                  int64_t splits, const ColumnSumsOut<T>& out) {
  __shared__ double lane_sums[kSaeRowLanes][kSaeColumns + 1];
  __shared__ long long lane_counts[kSaeRowLanes][kSaeColumns + 1];
  lane_sums[threadIdx.y][threadIdx.x] = sum;
  if (kCount) lane_counts[threadIdx.y][threadIdx.x] = count;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    for (int r = 1; r < kSaeRowLanes; ++r) {
      sum += lane_sums[r][threadIdx.x];
      if (kCount) count += lane_counts[r][threadIdx.x];
    }
    if (splits == 1) {
      out.sum[c] = static_cast<T>(sum);
      if (kCount) out.count[c] = static_cast<T>(count);
    } else {
      out.partial_sum[split * cols + c] = sum;
      if (kCount) out.partial_count[split * cols + c] = count;
    }
  }
  __syncthreads();  // the shared arrays are rewritten by the block's next task
}

// f [rows, cols] in place: f = relu(f + bias[c]); sums and counts the results per column.
template <typename T>
__global__ void encoder_activate_kernel(T* f, const T* bias, ColumnSumsOut<T> out, int64_t rows, int64_t cols,
                                        int64_t splits) {
  const int64_t tiles = (cols + kSaeColumns - 1) / kSaeColumns, chunk = (rows + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < tiles * splits; task += gridDim.x) {
    const int64_t tile = task % tiles, split = task / tiles;
    const int64_t c = tile * kSaeColumns + threadIdx.x;
    double sum = 0.0;
    long long count = 0;
    if (c < cols) {
      const T b = bias[c];
      T* column = f + c;
      const int64_t end = min(rows, (split + 1) * chunk);
      int64_t r = split * chunk + threadIdx.y;
      for (; r + (kSaeUnroll - 1) * kSaeRowLanes < end; r += kSaeUnroll * kSaeRowLanes) {
        T v[kSaeUnroll];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) v[u] = column[(r + u * kSaeRowLanes) * cols];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) {
          const T pre = v[u] + b;
          const T act = pre < T(0) ? T(0) : pre;  // as the CPU's std::max(pre, 0): a NaN stays NaN
          column[(r + u * kSaeRowLanes) * cols] = act;
          sum += act;
          count += act > T(0) ? 1 : 0;
        }
      }
      for (; r < end; r += kSaeRowLanes) {
        const T pre = column[r * cols] + b;
        const T act = pre < T(0) ? T(0) : pre;
        column[r * cols] = act;
        sum += act;
        count += act > T(0) ? 1 : 0;
      }
    }
    store_column_sums<T, true>(sum, count, c, cols, split, splits, out);
  }
}

// grad [rows, cols] in place: grad = (grad + row_add[c]) * (f > 0); sums the results per column.
// Multiplied by the mask, as on the CPU (and as autograd's g * step(pre)): a non-finite gradient stays
// non-finite where f is 0, so that NaN weights stop the run instead of dying silently.
template <typename T>
__global__ void encoder_backward_kernel(T* grad, const T* f, const T* row_add, ColumnSumsOut<T> out, int64_t rows,
                                        int64_t cols, int64_t splits) {
  const int64_t tiles = (cols + kSaeColumns - 1) / kSaeColumns, chunk = (rows + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < tiles * splits; task += gridDim.x) {
    const int64_t tile = task % tiles, split = task / tiles;
    const int64_t c = tile * kSaeColumns + threadIdx.x;
    double sum = 0.0;
    if (c < cols) {
      const T a = row_add[c];
      T* g_column = grad + c;
      const T* f_column = f + c;
      const int64_t end = min(rows, (split + 1) * chunk);
      int64_t r = split * chunk + threadIdx.y;
      for (; r + (kSaeUnroll - 1) * kSaeRowLanes < end; r += kSaeUnroll * kSaeRowLanes) {
        bool on[kSaeUnroll];
        T v[kSaeUnroll];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) on[u] = f_column[(r + u * kSaeRowLanes) * cols] > T(0);
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) v[u] = g_column[(r + u * kSaeRowLanes) * cols];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) {
          const T result = (v[u] + a) * (on[u] ? T(1) : T(0));
          g_column[(r + u * kSaeRowLanes) * cols] = result;
          sum += result;
        }
      }
      for (; r < end; r += kSaeRowLanes) {
        const T result = (g_column[r * cols] + a) * (f_column[r * cols] > T(0) ? T(1) : T(0));
        g_column[r * cols] = result;
        sum += result;
      }
    }
    store_column_sums<T, false>(sum, 0, c, cols, split, splits, out);
  }
}

// Adds the partials [splits, cols] of the kernels above in slice order, one thread per column.
template <typename T>
__global__ void finish_column_sums_kernel(ColumnSumsOut<T> out, int64_t cols, int64_t splits) {
  for (int64_t c = thread_index(); c < cols; c += grid_stride()) {
    double sum = 0.0;
    long long count = 0;
    for (int64_t s = 0; s < splits; ++s) {
      sum += out.partial_sum[s * cols + c];
      if (out.count) count += out.partial_count[s * cols + c];
    }
    out.sum[c] = static_cast<T>(sum);
    if (out.count) out.count[c] = static_cast<T>(count);
  }
}

// Launches `launch(grid, out, splits)` for the main kernel, with partials and the finishing
// kernel when the rows are split. col_count may be null.
template <typename T, typename Launch>
void launch_column_pass(int64_t rows, int64_t cols, T* col_sum, T* col_count, Launch launch) {
  const int64_t splits = sae_row_splits(rows);
  const int64_t tasks = ceil_div(cols, kSaeColumns) * splits;
  ColumnSumsOut<T> out{col_sum, col_count, nullptr, nullptr};
  if (splits == 1) {
    launch(grid_for(tasks, 1), out, splits);
    SAE_CUDA_CHECK_LAUNCH();
    return;
  }
  const size_t partials = static_cast<size_t>(splits * cols);
  DeviceBuffer scratch(partials * sizeof(double) + (col_count ? partials * sizeof(long long) : 0));
  out.partial_sum = static_cast<double*>(scratch.ptr);
  out.partial_count = col_count ? reinterpret_cast<long long*>(out.partial_sum + partials) : nullptr;
  launch(grid_for(tasks, 1), out, splits);
  SAE_CUDA_CHECK_LAUNCH();
  finish_column_sums_kernel<<<grid_for(cols), kBlock, 0, cuda_stream()>>>(out, cols, splits);
  SAE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void encoder_activate_typed(T* f, const T* bias, T* col_sum, T* col_count, int64_t rows, int64_t cols) {
  if (cols == 0) return;  // rows == 0 still runs: the sums and counts become 0
  launch_column_pass(rows, cols, col_sum, col_count, [&](int grid, const ColumnSumsOut<T>& out, int64_t splits) {
    encoder_activate_kernel<<<grid, dim3(kSaeColumns, kSaeRowLanes), 0, cuda_stream()>>>(f, bias, out, rows, cols,
                                                                                         splits);
  });
}

template <typename T>
void encoder_backward_typed(T* grad, const T* f, const T* row_add, T* col_sum, int64_t rows, int64_t cols) {
  if (cols == 0) return;
  launch_column_pass(rows, cols, col_sum, static_cast<T*>(nullptr),
                     [&](int grid, const ColumnSumsOut<T>& out, int64_t splits) {
                       encoder_backward_kernel<<<grid, dim3(kSaeColumns, kSaeRowLanes), 0, cuda_stream()>>>(
                           grad, f, row_add, out, rows, cols, splits);
                     });
}

}  // namespace

void encoder_activate_cuda(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count) {
  dispatch_float(f.dtype(), "encoder_activate", [&](auto zero) {
    using T = decltype(zero);
    encoder_activate_typed(f.data<T>(), bias.data<T>(), col_sum.data<T>(), col_count.data<T>(),
                           f.size(0), f.size(1));
  });
}

void encoder_backward_cuda(Tensor& grad, const Tensor& f, const Tensor& row_add, Tensor& col_sum) {
  dispatch_float(f.dtype(), "encoder_backward", [&](auto zero) {
    using T = decltype(zero);
    encoder_backward_typed(grad.data<T>(), f.data<T>(), row_add.data<T>(), col_sum.data<T>(),
                           f.size(0), f.size(1));
  });
}

}  // namespace sae

namespace sae {

const StandardKernelTable& standard_cuda_kernels() {
  static const StandardKernelTable table{STANDARD_KERNELS(SAE_CUDA_KERNEL)};
  return table;
}

}  // namespace sae
