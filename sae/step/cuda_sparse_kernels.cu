// CUDA kernels of the sparse family (sae_kernels.h), each computing what its CPU twin in
// cpu_sparse_kernels.cpp computes, to rounding: the build passes --fmad=false, so nvcc never fuses
// a*b+c on its own, but sums run in another order than on the CPU (shuffle trees, tiles), and the
// CPU's sparse decoder backward uses fused multiply-adds (std::fma) where the kernels below multiply
// and add apart. The parity tests (tests/sae/step/test_cuda_sae.cpp) set their tolerances for that.
// No atomics: every sum has one owner and a fixed order, so results are bitwise repeatable. Inputs
// were validated by the front-end (sae_ops.cpp); everything runs on the backend's one stream.
#include <algorithm>
#include <climits>
#include <cmath>

#include <cub/device/device_radix_sort.cuh>

#include "sae/step/cuda_block.cuh"
#include "sae/step/kernel_decls.h"
#include "tensor/cuda/common.cuh"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// ---------------------------------------------------------------- sparse SAE kernels
//
// The sparse path of the SAE step (sae_kernels.h, sae_step.h): f's positive entries listed by
// feature (CSC), the decoder product from f's positive entries, and the two backward kernels that
// hand each gradient value to its ParamUpdate (written out, or one Adam step at once). Like the
// kernels above they use no atomics: every sum has one owner and a fixed order, so results are
// bitwise repeatable.
//
//   sparse_index             by feature: f [N, F] cut into slices of kSparseSliceRows rows; count
//                            the entries of every (slice, column), turn the counts into offsets
//                            (per column over its slices, then one scan over the columns), then
//                            each (slice, column) thread writes its entries in row order. By token:
//                            rows cut into segments of kRowSegment columns, one warp per (row,
//                            segment) counts its entries (ballots), offsets per row over its
//                            segments, one scan over the rows, then each warp writes its entries
//                            in column order (ballot prefix counts).
//   sparse_by_feature        the by-token lists sorted by feature with CUB's stable radix sort (no
//                            dense [N, F] scratch), then gathered, col_ptr by binary search.
//   sparse_decode            one block per (token, 256 columns of x_hat): each thread adds its
//                            column of W_dec for every entry of the token, in feature order.
//   sparse_scatter           one block per row: its threads write the row's entries into f.
//   sparse_decoder_backward  one block per feature: each warp takes one entry at a time and
//                            computes dx[t] . W_dec[i] (lanes over D, a fixed shuffle tree); then,
//                            after a barrier (every old value of the row has been read), each
//                            thread sums its columns of dW_dec[i] over the entries in token order
//                            and hands them to the update.
//   sparse_encoder_backward  one block per tile of 32 features x 32 rows of W_enc: warp by feature,
//                            lane by row j, G[i][j] = sum over the feature's entries of
//                            dpre * x[t, j] (coalesced rows of x) into shared memory; then lanes
//                            over the 32 features update W_enc[j, i0:i0+32] (coalesced) reading G
//                            transposed (padded: no bank conflicts). The tiles of rows 0..31 also
//                            sum db_enc.

// Raw pointers of a ParamUpdate, passed to kernels by value.
template <typename T>
struct UpdateTarget {
  T* param;
  T* grad;
  T* m;
  T* v;
  bool adam;
  AdamConstants<T> c;
};

template <typename T>
UpdateTarget<T> update_target(ParamUpdate& u) {
  UpdateTarget<T> t{};
  t.param = u.param.data<T>();
  t.adam = u.adam;
  if (u.adam) {
    t.m = u.m.data<T>();
    t.v = u.v.data<T>();
    t.c = adam_constants<T>(u.scalars);
  } else {
    t.grad = u.grad.data<T>();
  }
  return t;
}

// Element `index` of the parameter has gradient g.
template <typename T>
__device__ inline void store_gradient(const UpdateTarget<T>& u, int64_t index, T g) {
  if (!u.adam) {
    u.grad[index] = g;
    return;
  }
  T param = u.param[index], m = u.m[index], v = u.v[index];
  adam_element(param, m, v, g, u.c);
  u.m[index] = m;
  u.v[index] = v;
  u.param[index] = param;
}

constexpr int64_t kSparseSliceRows = 256;
constexpr int kWarps = kBlock / 32;  // 8 warps in a block of kBlock threads

// counts[s * cols + c] = entries > 0 of column c in rows [s * kSparseSliceRows, ...) of that slice.
// f is stored as S (float32, float64, or bf16 widened as read: the standard step's f at bf16).
template <typename S>
__global__ void count_slices_kernel(int32_t* counts, const S* f, int64_t rows, int64_t cols, int64_t slices) {
  for (int64_t k = thread_index(); k < slices * cols; k += grid_stride()) {
    const int64_t slice = k / cols, c = k % cols;
    const int64_t end = min(rows, (slice + 1) * kSparseSliceRows);
    int32_t count = 0;
    for (int64_t r = slice * kSparseSliceRows; r < end; ++r) count += load_value(f[r * cols + c]) > 0 ? 1 : 0;
    counts[k] = count;
  }
}

// Per column: counts become offsets within the column (slice order); col_ptr[c + 1] = its total.
__global__ void slice_offsets_kernel(int32_t* counts, int32_t* col_ptr, int64_t cols, int64_t slices) {
  for (int64_t c = thread_index(); c < cols; c += grid_stride()) {
    int32_t running = 0;
    for (int64_t s = 0; s < slices; ++s) {
      const int32_t count = counts[s * cols + c];
      counts[s * cols + c] = running;
      running += count;
    }
    col_ptr[c + 1] = running;
  }
}

// One block: ptr[1..count] (counts) becomes their running sum; ptr[0] = 0. Each thread owns a
// contiguous chunk; the chunk totals are scanned by thread 0 (kBlock values).
__global__ void scan_counts_kernel(int32_t* ptr, int64_t count) {
  __shared__ int32_t chunk_base[kBlock];
  const int64_t chunk = (count + kBlock - 1) / kBlock;
  const int64_t begin = min(count, threadIdx.x * chunk), end = min(count, begin + chunk);
  int32_t total = 0;
  for (int64_t c = begin; c < end; ++c) total += ptr[c + 1];
  chunk_base[threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t running = 0;
    for (int k = 0; k < kBlock; ++k) {
      const int32_t t = chunk_base[k];
      chunk_base[k] = running;
      running += t;
    }
    ptr[0] = 0;
  }
  __syncthreads();
  int32_t running = chunk_base[threadIdx.x];
  for (int64_t c = begin; c < end; ++c) {
    running += ptr[c + 1];
    ptr[c + 1] = running;
  }
}

template <typename T, typename S>
__global__ void fill_columns_kernel(int32_t* out_rows, T* out_vals, const int32_t* offsets, const int32_t* col_ptr,
                                    const S* f, int64_t rows, int64_t cols, int64_t slices) {
  for (int64_t k = thread_index(); k < slices * cols; k += grid_stride()) {
    const int64_t slice = k / cols, c = k % cols;
    const int64_t end = min(rows, (slice + 1) * kSparseSliceRows);
    int32_t e = col_ptr[c] + offsets[k];
    for (int64_t r = slice * kSparseSliceRows; r < end; ++r) {
      const T v = load_value(f[r * cols + c]);
      if (v > T(0)) {
        out_rows[e] = static_cast<int32_t>(r);
        out_vals[e] = v;
        ++e;
      }
    }
  }
}

// By token, rows are cut into segments of kRowSegment columns, one warp per (row, segment) task.
constexpr int64_t kRowSegment = 1024;

// counts[r * segments + s] = entries > 0 of row r in segment s (ballots over 32 columns at a time).
template <typename S>
__global__ void count_row_segments_kernel(int32_t* counts, const S* f, int64_t rows, int64_t cols, int64_t segments) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t task = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; task < rows * segments; task += warps) {
    const int64_t r = task / segments, c_end = min(cols, (task % segments + 1) * kRowSegment);
    int32_t count = 0;
    for (int64_t c0 = (task % segments) * kRowSegment; c0 < c_end; c0 += 32) {
      const int64_t c = c0 + lane;
      count += __popc(__ballot_sync(0xffffffffu, c < c_end && load_value(f[r * cols + c]) > 0));
    }
    if (lane == 0) counts[task] = count;
  }
}

// Per row: segment counts become offsets within the row; row_ptr[r + 1] = the row's total.
__global__ void segment_offsets_kernel(int32_t* counts, int32_t* row_ptr, int64_t rows, int64_t segments) {
  for (int64_t r = thread_index(); r < rows; r += grid_stride()) {
    int32_t running = 0;
    for (int64_t s = 0; s < segments; ++s) {
      const int32_t count = counts[r * segments + s];
      counts[r * segments + s] = running;
      running += count;
    }
    row_ptr[r + 1] = running;
  }
}

// Each (row, segment) warp writes its entries in column order after the row's earlier segments.
template <typename T, typename S>
__global__ void fill_row_segments_kernel(int32_t* out_cols, T* out_vals, const int32_t* offsets,
                                         const int32_t* row_ptr, const S* f, int64_t rows, int64_t cols,
                                         int64_t segments) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t task = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; task < rows * segments; task += warps) {
    const int64_t r = task / segments, c_end = min(cols, (task % segments + 1) * kRowSegment);
    int32_t written = row_ptr[r] + offsets[task];
    for (int64_t c0 = (task % segments) * kRowSegment; c0 < c_end; c0 += 32) {
      const int64_t c = c0 + lane;
      const T v = c < c_end ? T(load_value(f[r * cols + c])) : T(0);
      const bool on = v > T(0);
      const unsigned ballot = __ballot_sync(0xffffffffu, on);
      if (on) {
        const int32_t k = written + __popc(ballot & ((1u << lane) - 1u));
        out_cols[k] = static_cast<int32_t>(c);
        out_vals[k] = v;
      }
      written += __popc(ballot);
    }
  }
}

// The by-feature lists (col_ptr, rows, vals) of the entries of f [rows, cols] that are > 0.
template <typename T, typename S>
void by_feature_from_dense(SparseFeatures& s, const S* f, int64_t rows, int64_t cols) {
  int32_t* col_ptr = s.col_ptr.data<int32_t>();
  if (cols == 0) {
    SAE_CUDA_CHECK(cudaMemsetAsync(col_ptr, 0, sizeof(int32_t), cuda_stream()));
  } else {
    const int64_t slices = std::max<int64_t>(1, ceil_div(rows, kSparseSliceRows));
    DeviceBuffer counts(static_cast<size_t>(slices * cols) * sizeof(int32_t));
    int32_t* count = static_cast<int32_t*>(counts.ptr);
    count_slices_kernel<<<grid_for(slices * cols), kBlock, 0, cuda_stream()>>>(count, f, rows, cols, slices);
    SAE_CUDA_CHECK_LAUNCH();
    slice_offsets_kernel<<<grid_for(cols), kBlock, 0, cuda_stream()>>>(count, col_ptr, cols, slices);
    SAE_CUDA_CHECK_LAUNCH();
    scan_counts_kernel<<<1, kBlock, 0, cuda_stream()>>>(col_ptr, cols);
    SAE_CUDA_CHECK_LAUNCH();
    fill_columns_kernel<<<grid_for(slices * cols), kBlock, 0, cuda_stream()>>>(
        s.rows.data<int32_t>(), s.vals.data<T>(), count, col_ptr, f, rows, cols, slices);
    SAE_CUDA_CHECK_LAUNCH();
  }
}

template <typename T, typename S>
void sparse_index_typed(SparseFeatures& s, const S* f, int64_t rows, int64_t cols) {
  int32_t* row_ptr = s.row_ptr.data<int32_t>();
  by_feature_from_dense<T>(s, f, rows, cols);
  // By token.
  if (rows == 0) {
    SAE_CUDA_CHECK(cudaMemsetAsync(row_ptr, 0, sizeof(int32_t), cuda_stream()));
    return;
  }
  const int64_t segments = std::max<int64_t>(1, ceil_div(cols, kRowSegment));
  DeviceBuffer counts(static_cast<size_t>(rows * segments) * sizeof(int32_t));
  int32_t* count = static_cast<int32_t*>(counts.ptr);
  count_row_segments_kernel<<<grid_for(rows * segments, kWarps), kBlock, 0, cuda_stream()>>>(count, f, rows, cols,
                                                                                         segments);
  SAE_CUDA_CHECK_LAUNCH();
  segment_offsets_kernel<<<grid_for(rows), kBlock, 0, cuda_stream()>>>(count, row_ptr, rows, segments);
  SAE_CUDA_CHECK_LAUNCH();
  scan_counts_kernel<<<1, kBlock, 0, cuda_stream()>>>(row_ptr, rows);
  SAE_CUDA_CHECK_LAUNCH();
  fill_row_segments_kernel<<<grid_for(rows * segments, kWarps), kBlock, 0, cuda_stream()>>>(
      s.cols.data<int32_t>(), s.row_vals.data<T>(), count, row_ptr, f, rows, cols, segments);
  SAE_CUDA_CHECK_LAUNCH();
}

// sparse_by_feature: the by-token entries (row order, then column order) sorted by column with a
// stable radix sort (CUB's: stable, so each feature's entries keep their row order, and the result
// is fully determined by its input), then gathered: rows[p], vals[p] of the p-th entry by feature;
// col_ptr[c] = the first position whose column is >= c (a binary search per feature); each
// feature's count and sum read off its list in row order. Memory: O(entries), never [rows, cols].
// entry_row[e - row_ptr[0]] = the row of by-token entry e.
__global__ void entry_rows_kernel(int32_t* entry_row, const int32_t* row_ptr, int64_t rows) {
  const int32_t base = row_ptr[0];
  for (int64_t r = thread_index(); r < rows; r += grid_stride())
    for (int32_t e = row_ptr[r]; e < row_ptr[r + 1]; ++e) entry_row[e - base] = static_cast<int32_t>(r);
}

// ends = {row_ptr[0], row_ptr[rows]}: where the lists' entries begin and end.
__global__ void list_ends_kernel(int32_t* ends, const int32_t* row_ptr, int64_t rows) {
  if (thread_index() == 0) {
    ends[0] = row_ptr[0];
    ends[1] = row_ptr[rows];
  }
}

__global__ void iota_kernel(int32_t* out, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) out[i] = static_cast<int32_t>(i);
}

template <typename T>
__global__ void gather_by_feature_kernel(int32_t* rows_out, T* vals_out, const int32_t* order, const int32_t* entry_row,
                                         const T* row_vals, int64_t entries) {
  for (int64_t p = thread_index(); p < entries; p += grid_stride()) {
    const int32_t e = order[p];
    rows_out[p] = entry_row[e];
    vals_out[p] = row_vals[e];
  }
}

// col_ptr[c] for c in [0, cols]: the number of sorted keys below c.
__global__ void col_ptr_from_sorted_kernel(int32_t* col_ptr, const int32_t* sorted_cols, int64_t entries, int64_t cols) {
  for (int64_t c = thread_index(); c <= cols; c += grid_stride()) {
    int64_t lo = 0, hi = entries;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (sorted_cols[mid] < c) lo = mid + 1; else hi = mid;
    }
    col_ptr[c] = static_cast<int32_t>(lo);
  }
}

template <typename T>
__global__ void feature_sums_kernel(T* col_sum, T* col_count, const int32_t* col_ptr, const T* vals, int64_t cols) {
  for (int64_t c = thread_index(); c < cols; c += grid_stride()) {
    T sum = T(0);
    for (int32_t e = col_ptr[c]; e < col_ptr[c + 1]; ++e) sum += vals[e];
    col_sum[c] = sum;
    col_count[c] = static_cast<T>(col_ptr[c + 1] - col_ptr[c]);
  }
}

template <typename T>
void sparse_by_feature_typed(SparseFeatures& s, T* col_sum, T* col_count, int64_t rows, int64_t cols) {
  int32_t* col_ptr = s.col_ptr.data<int32_t>();
  if (cols == 0) {
    SAE_CUDA_CHECK(cudaMemsetAsync(col_ptr, 0, sizeof(int32_t), cuda_stream()));
    return;
  }
  // The entries' range is needed on the host to size the sort: one read of two values.
  int32_t ends[2] = {0, 0};
  if (rows > 0) {
    DeviceBuffer ends_device(sizeof ends);
    list_ends_kernel<<<1, 32, 0, cuda_stream()>>>(static_cast<int32_t*>(ends_device.ptr), s.row_ptr.data<int32_t>(),
                                                  rows);
    SAE_CUDA_CHECK_LAUNCH();
    HostWorkCounter::note_read();
    cuda_copy_to_host(ends, ends_device.ptr, sizeof ends);
  }
  const int32_t base = ends[0], entries = ends[1] - ends[0];
  if (entries > 0) {
    const size_t n = static_cast<size_t>(entries);
    DeviceBuffer entry_row(n * sizeof(int32_t)), order_in(n * sizeof(int32_t)), order(n * sizeof(int32_t)),
        sorted_cols(n * sizeof(int32_t));
    int32_t* row_of = static_cast<int32_t*>(entry_row.ptr);
    entry_rows_kernel<<<grid_for(rows), kBlock, 0, cuda_stream()>>>(row_of, s.row_ptr.data<int32_t>(), rows);
    SAE_CUDA_CHECK_LAUNCH();
    iota_kernel<<<grid_for(entries), kBlock, 0, cuda_stream()>>>(static_cast<int32_t*>(order_in.ptr), entries);
    SAE_CUDA_CHECK_LAUNCH();
    int end_bit = 1;
    while (end_bit < 31 && (int64_t(1) << end_bit) <= cols) ++end_bit;  // every column index < 2^end_bit
    size_t temp_bytes = 0;
    const int32_t* keys = s.cols.data<int32_t>() + base;
    SAE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys,
                                                   static_cast<int32_t*>(sorted_cols.ptr),
                                                   static_cast<int32_t*>(order_in.ptr), static_cast<int32_t*>(order.ptr),
                                                   entries, 0, end_bit, cuda_stream()));
    DeviceBuffer temp(std::max<size_t>(temp_bytes, 1));
    SAE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.ptr, temp_bytes, keys,
                                                   static_cast<int32_t*>(sorted_cols.ptr),
                                                   static_cast<int32_t*>(order_in.ptr), static_cast<int32_t*>(order.ptr),
                                                   entries, 0, end_bit, cuda_stream()));
    gather_by_feature_kernel<<<grid_for(entries), kBlock, 0, cuda_stream()>>>(
        s.rows.data<int32_t>(), s.vals.data<T>(), static_cast<const int32_t*>(order.ptr), row_of,
        s.row_vals.data<T>() + base, entries);
    SAE_CUDA_CHECK_LAUNCH();
    col_ptr_from_sorted_kernel<<<grid_for(cols + 1), kBlock, 0, cuda_stream()>>>(
        col_ptr, static_cast<const int32_t*>(sorted_cols.ptr), entries, cols);
    SAE_CUDA_CHECK_LAUNCH();
  } else {
    SAE_CUDA_CHECK(cudaMemsetAsync(col_ptr, 0, static_cast<size_t>(cols + 1) * sizeof(int32_t), cuda_stream()));
  }
  feature_sums_kernel<<<grid_for(cols), kBlock, 0, cuda_stream()>>>(col_sum, col_count, col_ptr, s.vals.data<T>(),
                                                                   cols);
  SAE_CUDA_CHECK_LAUNCH();
}

template <typename T>
__global__ void sparse_decode_kernel(T* x_hat, const int32_t* row_ptr, const int32_t* cols_in, const T* row_vals,
                                     const T* W, const T* b, int64_t rows, int64_t d) {
  const int64_t slices = (d + kBlock - 1) / kBlock;
  for (int64_t task = blockIdx.x; task < rows * slices; task += gridDim.x) {
    const int64_t t = task / slices, c = (task % slices) * kBlock + threadIdx.x;
    if (c >= d) continue;
    const int32_t k0 = row_ptr[t], k1 = row_ptr[t + 1];
    T acc = T(0);
    for (int32_t k = k0; k < k1; ++k) acc += row_vals[k] * W[int64_t(cols_in[k]) * d + c];
    x_hat[t * d + c] = acc + b[c];
  }
}

template <typename T>
void sparse_decode_typed(T* x_hat, const SparseFeatures& s, const T* W, const T* b, int64_t rows, int64_t d) {
  if (rows == 0 || d == 0) return;
  sparse_decode_kernel<<<grid_for(rows * ceil_div(d, kBlock), 1), kBlock, 0, cuda_stream()>>>(
      x_hat, s.row_ptr.data<int32_t>(), s.cols.data<int32_t>(), s.row_vals.data<T>(), W, b, rows, d);
  SAE_CUDA_CHECK_LAUNCH();
}

// One block per row: its threads write the row's entries.
template <typename T>
__global__ void sparse_scatter_kernel(T* f, const int32_t* row_ptr, const int32_t* cols, const T* vals, int64_t rows,
                                      int64_t features) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    for (int64_t e = int64_t(row_ptr[r]) + threadIdx.x; e < row_ptr[r + 1]; e += blockDim.x)
      f[r * features + cols[e]] = vals[e];
}

template <typename T>
__global__ void sparse_decoder_backward_kernel(T* dpre, UpdateTarget<T> update, const T* dx, const int32_t* col_ptr,
                                               const int32_t* rows, const T* vals, const T* norms, const T* col_sum,
                                               T lambda, T tiny, bool unit_norm, int64_t d, int64_t cols) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t i = blockIdx.x; i < cols; i += gridDim.x) {
    const T* w = update.param + i * d;
    const int32_t e0 = col_ptr[i], e1 = col_ptr[i + 1];
    // The dense path's expressions: affine(norms, l1, 0), and affine(col_sum / maximum(norms, tiny), l1, 0).
    const T n = norms[i];
    const T row_add = lambda * n + T(0);
    const T scale = lambda * (col_sum[i] / (n > tiny ? n : tiny)) + T(0);
    for (int32_t e = e0 + warp; e < e1; e += kWarps) {
      const T* dx_t = dx + int64_t(rows[e]) * d;
      T part = T(0);
      for (int64_t k = lane; k < d; k += 32) part += dx_t[k] * w[k];
      for (int offset = 16; offset > 0; offset /= 2) part += __shfl_down_sync(0xffffffffu, part, offset);
      if (lane == 0) dpre[e] = part + row_add;
    }
    __syncthreads();  // every dot product has read the old row before it is updated
    auto row_gradient = [&](int64_t k) {
      T g = T(0);
      for (int32_t e = e0; e < e1; ++e) g += vals[e] * dx[int64_t(rows[e]) * d + k];
      return g + scale * w[k];
    };
    if (!unit_norm) {
      for (int64_t k = threadIdx.x; k < d; k += kBlock) store_gradient(update, i * d + k, row_gradient(k));
      continue;
    }
    // Unit-norm decoder: the gradient's component along u = w / n goes first (the gradient is
    // summed twice rather than held), and after Adam the row is divided by its norm.
    const bool project = n > T(0);
    double part = 0;
    if (project)
      for (int64_t k = threadIdx.x; k < d; k += kBlock) part += double(row_gradient(k)) * double(w[k] / n);
    const T along = static_cast<T>(block_sum(part));
    for (int64_t k = threadIdx.x; k < d; k += kBlock) {
      const T g = row_gradient(k);
      store_gradient(update, i * d + k, project ? g - along * (w[k] / n) : g);
    }
    if (!update.adam) continue;
    double squares = 0;
    for (int64_t k = threadIdx.x; k < d; k += kBlock) squares += double(w[k]) * double(w[k]);  // the new row
    const T norm = static_cast<T>(sqrt(block_sum(squares)));
    if (norm > T(0))
      for (int64_t k = threadIdx.x; k < d; k += kBlock) update.param[i * d + k] = update.param[i * d + k] / norm;
    __syncthreads();  // the next feature's dot products read rows this block may have just written
  }
}

template <typename T>
void sparse_decoder_backward_typed(T* dpre, ParamUpdate& W_dec, const T* dx, const int32_t* col_ptr,
                                   const int32_t* rows, const T* vals, const T* norms, const T* col_sum, double l1,
                                   bool unit_norm, int64_t d, int64_t cols) {
  if (cols == 0) return;  // d == 0 still writes dpre (the L1 term alone), as the CPU does
  sparse_decoder_backward_kernel<<<grid_for(cols, 1), kBlock, 0, cuda_stream()>>>(
      dpre, update_target<T>(W_dec), dx, col_ptr, rows, vals, norms, col_sum, static_cast<T>(l1),
      static_cast<T>(1e-30), unit_norm, d, cols);
  SAE_CUDA_CHECK_LAUNCH();
}

constexpr int kEncoderTile = 32;  // features per tile = rows of W_enc per tile = lanes of a warp

template <typename T>
__global__ void sparse_encoder_backward_kernel(UpdateTarget<T> W, UpdateTarget<T> b, const T* x,
                                               const int32_t* col_ptr, const int32_t* rows, const T* dpre, int64_t d,
                                               int64_t cols) {
  __shared__ T G[kEncoderTile][kEncoderTile + 1];  // G[feature][row j]; padded against bank conflicts
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // At least one chunk of rows, so that db_enc is summed even when D = 0.
  const int64_t tiles = (cols + kEncoderTile - 1) / kEncoderTile;
  const int64_t chunks = d > 0 ? (d + kEncoderTile - 1) / kEncoderTile : 1;
  for (int64_t task = blockIdx.x; task < tiles * chunks; task += gridDim.x) {
    const int64_t i0 = (task % tiles) * kEncoderTile, j0 = (task / tiles) * kEncoderTile;
    for (int ii = warp; ii < kEncoderTile; ii += kWarps) {
      const int64_t i = i0 + ii, j = j0 + lane;
      T acc = T(0);
      if (i < cols && j < d) {
        for (int32_t e = col_ptr[i]; e < col_ptr[i + 1]; ++e) acc += dpre[e] * x[int64_t(rows[e]) * d + j];
      }
      G[ii][lane] = acc;
    }
    __syncthreads();
    for (int jj = warp; jj < kEncoderTile; jj += kWarps) {
      const int64_t j = j0 + jj, i = i0 + lane;
      if (j < d && i < cols) store_gradient(W, j * cols + i, G[lane][jj]);
    }
    if (j0 == 0 && warp == 0 && i0 + lane < cols) {
      const int64_t i = i0 + lane;
      T sum = T(0);
      for (int32_t e = col_ptr[i]; e < col_ptr[i + 1]; ++e) sum += dpre[e];
      store_gradient(b, i, sum);
    }
    __syncthreads();  // G is rewritten by the next task
  }
}

template <typename T>
void sparse_encoder_backward_typed(ParamUpdate& W_enc, ParamUpdate& b_enc, const T* x, const int32_t* col_ptr,
                                   const int32_t* rows, const T* dpre, int64_t d, int64_t cols) {
  if (cols == 0) return;
  const int64_t tasks = ceil_div(cols, kEncoderTile) * std::max<int64_t>(1, ceil_div(d, kEncoderTile));
  sparse_encoder_backward_kernel<<<grid_for(tasks, 1), kBlock, 0, cuda_stream()>>>(
      update_target<T>(W_enc), update_target<T>(b_enc), x, col_ptr, rows, dpre, d, cols);
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void sparse_index_cuda(SparseFeatures& s, const Tensor& f, const Tensor& col_count) {
  dispatch_compute_and_storage(f.dtype(), "sparse_index", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    sparse_index_typed<T>(s, f.data<S>(), f.size(0), f.size(1));
  });
}

void sparse_by_feature_cuda(SparseFeatures& s, Tensor& col_sum, Tensor& col_count) {
  dispatch_float(col_sum.dtype(), "sparse_by_feature", [&](auto zero) {
    using T = decltype(zero);
    sparse_by_feature_typed(s, col_sum.data<T>(), col_count.data<T>(), s.row_ptr.numel() - 1, col_sum.numel());
  });
}

void sparse_decode_cuda(Tensor& x_hat, const SparseFeatures& s, const Tensor& W_dec, const Tensor& b_dec) {
  dispatch_float(x_hat.dtype(), "sparse_decode", [&](auto zero) {
    using T = decltype(zero);
    sparse_decode_typed(x_hat.data<T>(), s, W_dec.data<T>(), b_dec.data<T>(), x_hat.size(0),
                        x_hat.size(1));
  });
}

void sparse_scatter_cuda(Tensor& f, const SparseFeatures& s, int64_t row0) {
  const int64_t rows = f.size(0);
  if (rows == 0) return;
  dispatch_float(f.dtype(), "sparse_scatter", [&](auto zero) {
    using T = decltype(zero);
    sparse_scatter_kernel<<<grid_for(rows, 1), kBlock, 0, cuda_stream()>>>(
        f.data<T>(), s.row_ptr.data<int32_t>() + row0, s.cols.data<int32_t>(), s.row_vals.data<T>(), rows, f.size(1));
    SAE_CUDA_CHECK_LAUNCH();
  });
}

void sparse_decoder_backward_cuda(Tensor& dpre, ParamUpdate& W_dec, const Tensor& grad_x_hat, const SparseFeatures& s,
                                  const Tensor& norms, const Tensor& col_sum, double l1, bool unit_norm) {
  const int64_t d = grad_x_hat.size(1), cols = W_dec.param.size(0);
  dispatch_float(grad_x_hat.dtype(), "sparse_decoder_backward", [&](auto zero) {
    using T = decltype(zero);
    sparse_decoder_backward_typed(dpre.data<T>(), W_dec, grad_x_hat.data<T>(), s.col_ptr.data<int32_t>(),
                                  s.rows.data<int32_t>(), s.vals.data<T>(), norms.data<T>(),
                                  col_sum.data<T>(), l1, unit_norm, d, cols);
  });
}

void sparse_encoder_backward_cuda(ParamUpdate& W_enc, ParamUpdate& b_enc, const Tensor& x, const SparseFeatures& s,
                                  const Tensor& dpre) {
  const int64_t d = x.size(1), cols = W_enc.param.size(1);
  dispatch_float(x.dtype(), "sparse_encoder_backward", [&](auto zero) {
    using T = decltype(zero);
    sparse_encoder_backward_typed(W_enc, b_enc, x.data<T>(), s.col_ptr.data<int32_t>(), s.rows.data<int32_t>(),
                                  dpre.data<T>(), d, cols);
  });
}

}  // namespace sae
