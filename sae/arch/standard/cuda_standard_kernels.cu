// CUDA kernels of the standard SAE (standard_kernels.h), computing what their CPU twins in
// cpu_standard_kernels.cpp compute, to rounding: encoder_activate and encoder_backward make one pass
// over f [N, F] (N rows = tokens, F columns = features), rewriting it in place and summing every
// column; decoder_penalty and decoder_residual make one pass over W_dec [F, D] and x_hat [N, D] with
// a sum over all of it; decoder_penalty_backward one pass over W_dec. Every sum is added in a fixed
// order (no atomics), so results repeat bit for bit.
#include <algorithm>

#include "sae/arch/standard/standard_kernels.h"
#include "sae/step/cuda_block.cuh"
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

// f [rows, cols] in place: f = relu(f + bias[c]); sums and counts the results per column. f is
// stored as S (T, or bf16 with T float: read widened, written rounded); the sums and counts are of
// the stored values.
template <typename T, typename S>
__global__ void encoder_activate_kernel(S* f, const T* bias, ColumnSumsOut<T> out, int64_t rows, int64_t cols,
                                        int64_t splits) {
  const int64_t tiles = (cols + kSaeColumns - 1) / kSaeColumns, chunk = (rows + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < tiles * splits; task += gridDim.x) {
    const int64_t tile = task % tiles, split = task / tiles;
    const int64_t c = tile * kSaeColumns + threadIdx.x;
    double sum = 0.0;
    long long count = 0;
    if (c < cols) {
      const T b = bias[c];
      S* column = f + c;
      const int64_t end = min(rows, (split + 1) * chunk);
      int64_t r = split * chunk + threadIdx.y;
      // as the CPU's std::max(pre, 0): a NaN stays NaN
      auto activate = [&](S& at, S value) {
        const T pre = load_value(value) + b;
        const S stored = store_value<S>(pre < T(0) ? T(0) : pre);
        at = stored;
        const T act = load_value(stored);
        sum += act;
        count += act > T(0) ? 1 : 0;
      };
      for (; r + (kSaeUnroll - 1) * kSaeRowLanes < end; r += kSaeUnroll * kSaeRowLanes) {
        S v[kSaeUnroll];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) v[u] = column[(r + u * kSaeRowLanes) * cols];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) activate(column[(r + u * kSaeRowLanes) * cols], v[u]);
      }
      for (; r < end; r += kSaeRowLanes) activate(column[r * cols], column[r * cols]);
    }
    store_column_sums<T, true>(sum, count, c, cols, split, splits, out);
  }
}

// grad [rows, cols] in place: grad = (grad + lambda norms[c]) * (f > 0); sums the results per column.
// Multiplied by the mask, as on the CPU (and as autograd's g * step(pre)): a non-finite gradient stays
// non-finite where f is 0, so that NaN weights stop the run instead of dying silently. grad and f are
// stored as S; the sums are of the results before they are stored.
template <typename T, typename S>
__global__ void encoder_backward_kernel(S* grad, const S* f, const T* norms, T lambda, ColumnSumsOut<T> out,
                                        int64_t rows, int64_t cols, int64_t splits) {
  const int64_t tiles = (cols + kSaeColumns - 1) / kSaeColumns, chunk = (rows + splits - 1) / splits;
  for (int64_t task = blockIdx.x; task < tiles * splits; task += gridDim.x) {
    const int64_t tile = task % tiles, split = task / tiles;
    const int64_t c = tile * kSaeColumns + threadIdx.x;
    double sum = 0.0;
    if (c < cols) {
      const T a = lambda * norms[c] + T(0);  // the L1 term's dLoss/df, as affine_(norms, lambda, 0)
      S* g_column = grad + c;
      const S* f_column = f + c;
      const int64_t end = min(rows, (split + 1) * chunk);
      int64_t r = split * chunk + threadIdx.y;
      for (; r + (kSaeUnroll - 1) * kSaeRowLanes < end; r += kSaeUnroll * kSaeRowLanes) {
        bool on[kSaeUnroll];
        S v[kSaeUnroll];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) on[u] = load_value(f_column[(r + u * kSaeRowLanes) * cols]) > T(0);
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) v[u] = g_column[(r + u * kSaeRowLanes) * cols];
#pragma unroll
        for (int u = 0; u < kSaeUnroll; ++u) {
          const T result = (load_value(v[u]) + a) * (on[u] ? T(1) : T(0));
          g_column[(r + u * kSaeRowLanes) * cols] = store_value<S>(result);
          sum += result;
        }
      }
      for (; r < end; r += kSaeRowLanes) {
        const T result = (load_value(g_column[r * cols]) + a) * (load_value(f_column[r * cols]) > T(0) ? T(1) : T(0));
        g_column[r * cols] = store_value<S>(result);
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

template <typename T, typename S>
void encoder_activate_typed(S* f, const T* bias, T* col_sum, T* col_count, int64_t rows, int64_t cols) {
  if (cols == 0) return;  // rows == 0 still runs: the sums and counts become 0
  launch_column_pass(rows, cols, col_sum, col_count, [&](int grid, const ColumnSumsOut<T>& out, int64_t splits) {
    encoder_activate_kernel<<<grid, dim3(kSaeColumns, kSaeRowLanes), 0, cuda_stream()>>>(f, bias, out, rows, cols,
                                                                                         splits);
  });
}

template <typename T, typename S>
void encoder_backward_typed(S* grad, const S* f, const T* norms, T lambda, T* col_sum, int64_t rows, int64_t cols) {
  if (cols == 0) return;
  launch_column_pass(rows, cols, col_sum, static_cast<T*>(nullptr),
                     [&](int grid, const ColumnSumsOut<T>& out, int64_t splits) {
                       encoder_backward_kernel<<<grid, dim3(kSaeColumns, kSaeRowLanes), 0, cuda_stream()>>>(
                           grad, f, norms, lambda, out, rows, cols, splits);
                     });
}

// ---------------------------------------------------------------- decoder kernels
//
// decoder_penalty and decoder_residual each end in one sum over the whole matrix. The rows are cut
// into `blocks` contiguous slices (a number that depends on the shape alone, never on the GPU); each
// block adds its slice in a fixed order (block_sum) into one partial, and with more than one block,
// finish_sums_kernel adds the partials in block order: two launches, no atomics, the same bits on
// every run and every GPU. Sums are in double, rounded to T once (the CPU also sums in double, in
// another order: the two agree to rounding).
constexpr int64_t kMaxSumBlocks = 1024;
constexpr int64_t kResidualElementsPerBlock = 4096;  // x_hat [N, D]: a slice holds about this many values
constexpr int64_t kPenaltyRowsPerBlock = 32;         // W_dec [F, D]: a slice holds about this many rows

int64_t sum_blocks(int64_t rows, int64_t rows_per_block) {
  return std::clamp<int64_t>(ceil_div(rows, std::max<int64_t>(rows_per_block, 1)), 1, kMaxSumBlocks);
}

// Rows [begin, end) of the slice of this block.
struct RowSlice {
  int64_t begin, end;
};
__device__ inline RowSlice block_rows(int64_t rows) {
  const int64_t chunk = (rows + gridDim.x - 1) / gridDim.x, begin = min(rows, blockIdx.x * chunk);
  return {begin, min(rows, begin + chunk)};
}

// One block: first[0] = T(sum of partials[0, blocks)); second (when not null) = T(sum of
// partials[blocks, 2 blocks)), in a fixed order.
template <typename T>
__global__ void finish_sums_kernel(const double* partials, int64_t blocks, T* first, T* second) {
  double a = 0.0, b = 0.0;
  for (int64_t i = threadIdx.x; i < blocks; i += blockDim.x) {
    a += partials[i];
    if (second) b += partials[blocks + i];
  }
  a = block_sum(a);
  if (second) b = block_sum(b);
  if (threadIdx.x == 0) {
    *first = static_cast<T>(a);
    if (second) *second = static_cast<T>(b);
  }
}

// The block's sums (every thread calls it): straight into first/second with one block, else into
// partials[blockIdx.x] and partials[gridDim.x + blockIdx.x].
template <typename T>
__device__ void store_block_sums(double a, double b, double* partials, T* first, T* second) {
  a = block_sum(a);
  if (second) b = block_sum(b);
  if (threadIdx.x != 0) return;
  if (partials) {
    partials[blockIdx.x] = a;
    if (second) partials[gridDim.x + blockIdx.x] = b;
  } else {
    *first = static_cast<T>(a);
    if (second) *second = static_cast<T>(b);
  }
}

// Launches `launch(blocks, partials)` (partials null with one block), then the finishing kernel.
template <typename T, typename Launch>
void launch_sums(int64_t blocks, T* first, T* second, Launch launch) {
  if (blocks == 1) {
    launch(1, static_cast<double*>(nullptr));
    SAE_CUDA_CHECK_LAUNCH();
    return;
  }
  DeviceBuffer partials(static_cast<size_t>(2 * blocks) * sizeof(double));
  double* p = static_cast<double*>(partials.ptr);
  launch(static_cast<int>(blocks), p);
  SAE_CUDA_CHECK_LAUNCH();
  finish_sums_kernel<<<1, kBlock, 0, cuda_stream()>>>(p, blocks, first, second);
  SAE_CUDA_CHECK_LAUNCH();
}

// One warp per row of W [rows, cols] (8 warps per block, rows of the block's slice in turn): the
// row's norm (squares summed in double by lane, then across lanes in a fixed tree), and lane 0's
// running sums of col_sum[i] * norms[i] (the product in T, as binary_ mul gives it) and col_count[i].
template <typename T>
__global__ void decoder_penalty_kernel(T* norms, const T* W, const T* col_sum, const T* col_count, int64_t rows,
                                       int64_t cols, double* partials, T* l1, T* active) {
  const RowSlice slice = block_rows(rows);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  double l1_part = 0.0, count_part = 0.0;
  for (int64_t i = slice.begin + warp; i < slice.end; i += warps) {
    const T* w = W + i * cols;
    double squares = 0.0;
    for (int64_t c = lane; c < cols; c += 32) squares += double(w[c]) * double(w[c]);
    for (int offset = 16; offset > 0; offset /= 2) squares += __shfl_down_sync(0xffffffffu, squares, offset);
    if (lane == 0) {
      const T n = static_cast<T>(sqrt(squares));
      norms[i] = n;
      l1_part += double(col_sum[i] * n);
      count_part += double(col_count[i]);
    }
  }
  store_block_sums(l1_part, count_part, partials, l1, active);
}

// x_hat [rows, cols] += bias (when not null); r = x_hat - target; grad = 2 r + 0 (as affine_ gives
// it); the squares of r summed. Threads stride along each row of the block's slice (coalesced).
template <typename T>
__global__ void decoder_residual_kernel(T* x_hat, const T* bias, const T* target, T* grad, int64_t rows,
                                        int64_t cols, double* partials, T* rec) {
  const RowSlice slice = block_rows(rows);
  double squares = 0.0;
  for (int64_t row = slice.begin; row < slice.end; ++row) {
    T* xr = x_hat + row * cols;
    const T* tr = target + row * cols;
    T* gr = grad + row * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      T v = xr[c];
      if (bias) {
        v = v + bias[c];
        xr[c] = v;
      }
      const T r = v - tr[c];
      gr[c] = T(2) * r + T(0);
      squares += double(r) * double(r);
    }
  }
  store_block_sums(squares, 0.0, partials, rec, static_cast<T*>(nullptr));
}

// grad [rows, cols] += scale_i W[i,:], scale_i = lambda col_sum[i] / max(norms[i], 1e-30) computed as
// the CPU does (maximum, div, affine_): the result is the CPU's bit for bit. Grid as add_scaled_rows.
template <typename T>
__global__ void decoder_penalty_backward_kernel(T* grad, const T* W, const T* norms, const T* col_sum, T lambda,
                                                int64_t rows, int64_t cols) {
  const T tiny = static_cast<T>(1e-30);
  for (int64_t i = blockIdx.y; i < rows; i += gridDim.y) {
    const T floor = norms[i] > tiny ? norms[i] : tiny;
    const T scale = lambda * (col_sum[i] / floor) + T(0);
    T* g = grad + i * cols;
    const T* w = W + i * cols;
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols; c += int64_t(blockDim.x) * gridDim.x)
      g[c] = g[c] + scale * w[c];
  }
}

}  // namespace

void encoder_activate_cuda(Tensor& f, const Tensor& bias, Tensor& col_sum, Tensor& col_count) {
  dispatch_compute_and_storage(f.dtype(), "encoder_activate", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    encoder_activate_typed(f.data<S>(), bias.data<T>(), col_sum.data<T>(), col_count.data<T>(), f.size(0), f.size(1));
  });
}

void encoder_backward_cuda(Tensor& grad, const Tensor& f, const Tensor& norms, double lambda, Tensor& col_sum) {
  dispatch_compute_and_storage(f.dtype(), "encoder_backward", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    encoder_backward_typed(grad.data<S>(), f.data<S>(), norms.data<T>(), static_cast<T>(lambda), col_sum.data<T>(),
                           f.size(0), f.size(1));
  });
}

void decoder_penalty_cuda(Tensor& norms, Tensor& l1, Tensor& active, const Tensor& W_dec, const Tensor& col_sum,
                          const Tensor& col_count) {
  const int64_t rows = W_dec.size(0), cols = W_dec.size(1);
  dispatch_float(W_dec.dtype(), "decoder_penalty", [&](auto zero) {
    using T = decltype(zero);
    T *n = norms.data<T>(), *l1_out = l1.data<T>(), *active_out = active.data<T>();
    const T *W = W_dec.data<T>(), *s = col_sum.data<T>(), *counts = col_count.data<T>();
    launch_sums(sum_blocks(rows, kPenaltyRowsPerBlock), l1_out, active_out, [&](int blocks, double* partials) {
      decoder_penalty_kernel<<<blocks, kBlock, 0, cuda_stream()>>>(n, W, s, counts, rows, cols, partials, l1_out,
                                                                   active_out);
    });
  });
}

void decoder_residual_cuda(Tensor& x_hat, const Tensor& bias, const Tensor& target, Tensor& grad, Tensor& rec) {
  const int64_t rows = x_hat.size(0), cols = x_hat.size(1);
  const int64_t rows_per_block = kResidualElementsPerBlock / std::max<int64_t>(cols, 1);
  dispatch_float(x_hat.dtype(), "decoder_residual", [&](auto zero) {
    using T = decltype(zero);
    T *x = x_hat.data<T>(), *g = grad.data<T>(), *out = rec.data<T>();
    const T *b = bias.defined() ? bias.data<T>() : nullptr, *t = target.data<T>();
    launch_sums(sum_blocks(rows, rows_per_block), out, static_cast<T*>(nullptr), [&](int blocks, double* partials) {
      decoder_residual_kernel<<<blocks, kBlock, 0, cuda_stream()>>>(x, b, t, g, rows, cols, partials, out);
    });
  });
}

void decoder_penalty_backward_cuda(Tensor& grad_W_dec, const Tensor& W_dec, const Tensor& norms, const Tensor& col_sum,
                                   double lambda) {
  const int64_t rows = W_dec.size(0), cols = W_dec.size(1);
  if (rows == 0 || cols == 0) return;
  // Narrow rows get narrow blocks (a warp at least); grid y is limited to 65535, the loop covers more.
  const int threads = static_cast<int>(std::min<int64_t>(kBlock, ceil_div(cols, 32) * 32));
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(ceil_div(cols, threads), 1024)),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  dispatch_float(W_dec.dtype(), "decoder_penalty_backward", [&](auto zero) {
    using T = decltype(zero);
    decoder_penalty_backward_kernel<<<grid, threads, 0, cuda_stream()>>>(
        grad_W_dec.data<T>(), W_dec.data<T>(), norms.data<T>(), col_sum.data<T>(), static_cast<T>(lambda), rows, cols);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace sae

namespace sae {

const StandardKernelTable& standard_cuda_kernels() {
  static const StandardKernelTable table{STANDARD_KERNELS(SAE_CUDA_KERNEL)};
  return table;
}

}  // namespace sae
