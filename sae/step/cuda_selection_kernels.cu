// CUDA kernels of the selection family (sae_kernels.h), each computing what its CPU twin in
// cpu_selection_kernels.cpp computes:
//   topk_select       one block per row: the k-th largest candidate's integer key (selection_math.h)
//                     by radix selection, 8 bits a pass, each warp counting digits into its own
//                     histogram; then the row is swept in column order and the kept entries packed
//                     with block prefix counts into a slot of k per row; a scan over the rows gives
//                     row_ptr, and a copy packs the slots into the lists.
//   batchtopk_select  the same radix selection over the whole batch (per-block histograms added in
//                     block order), per-row counts above and at the threshold key, the ties handed
//                     to rows in order by one thread, then one block per row packs its entries.
// Pre-activations may be bfloat16 (the TopK family at --precision bf16): widened where read.
// No atomics: every count has one owner and a fixed order, so results repeat bit for bit.
#include <algorithm>

#include "sae/step/cuda_block.cuh"
#include "sae/step/kernel_decls.h"
#include "sae/step/selection_math.h"
#include "tensor/cuda/common.cuh"
#include "tensor/dispatch.h"

namespace sae {

namespace {

constexpr int kDigitBits = 8, kDigits = 1 << kDigitBits, kSelectWarps = kBlock / 32;

template <typename T>
using KeyOf = decltype(order_key(T(0)));

// Shared state of a block's radix selection.
template <typename Key>
struct RadixState {
  Key prefix, mask;
  long long rank;
};

// The block's histogram of the next digit of the candidates' keys that match state.prefix, and
// the digit where the count from the top reaches state.rank (state updated). `key_of(j, key)`
// says whether column j is a candidate and gives its key.
template <typename Key, typename KeyFn>
__device__ void radix_pass(RadixState<Key>& state, int shift, int64_t cols, KeyFn key_of) {
  __shared__ int warp_hist[kSelectWarps][kDigits];
  __shared__ int hist[kDigits];
  const int warp = threadIdx.x / 32;
  for (int b = threadIdx.x % 32; b < kDigits; b += 32) warp_hist[warp][b] = 0;
  __syncthreads();
  const Key prefix = state.prefix, mask = state.mask;
  for (int64_t j0 = 0; j0 < cols; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x;
    int digit = -1;
    Key key;
    if (j < cols && key_of(j, key) && (key & mask) == prefix) digit = int((key >> shift) & Key(kDigits - 1));
    warp_count_digit(warp_hist[warp], digit);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kDigits; b += blockDim.x) {
    int sum = 0;
    for (int w = 0; w < kSelectWarps; ++w) sum += warp_hist[w][b];
    hist[b] = sum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    long long above = 0;
    int digit = kDigits - 1;
    for (; digit > 0 && above + hist[digit] < state.rank; --digit) above += hist[digit];
    state.rank -= above;
    state.prefix |= Key(digit) << shift;
    state.mask |= Key(kDigits - 1) << shift;
  }
  __syncthreads();
}

// ---- topk_select ----

// P: the pre-activations' element type (T, or BFloat16 with T float: load_value widens it).
template <typename T, typename P>
__global__ void topk_rows_kernel(int32_t* slot_cols, T* slot_vals, int32_t* counts, const P* pre, const T* bias,
                                 const T* allowed, int64_t rows, int64_t cols, int64_t k) {
  using Key = KeyOf<T>;
  __shared__ RadixState<Key> state;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const P* row = pre + r * cols;
    auto key_of = [&](int64_t j, Key& key) {
      if (allowed && allowed[j] == T(0)) return false;
      const T v = T(load_value(row[j])) + bias[j];
      if (!(v == v)) return false;  // NaN is never selected
      key = order_key(v);
      return true;
    };
    int64_t local = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      Key key;
      local += key_of(j, key) ? 1 : 0;
    }
    const int64_t candidates = block_sum(local);
    const int64_t keep = k < candidates ? k : candidates;
    const bool take_all = keep == candidates;
    if (threadIdx.x == 0) {
      state.prefix = 0;
      state.mask = 0;
      state.rank = keep;
    }
    __syncthreads();
    if (!take_all)
      for (int pass = 0; pass * kDigitBits < int(8 * sizeof(Key)); ++pass)
        radix_pass(state, int(8 * sizeof(Key)) - kDigitBits * (pass + 1), cols, key_of);
    const Key threshold = state.prefix;
    const long long ties = state.rank;
    // Columns in order: those above the threshold key, the first `ties` at it; entries where P > 0.
    long long ties_seen = 0, written = 0;
    for (int64_t j0 = 0; j0 < cols; j0 += blockDim.x) {
      const int64_t j = j0 + threadIdx.x;
      Key key = 0;
      const bool candidate = j < cols && key_of(j, key);
      const bool above = candidate && (take_all || key > threshold), at = candidate && !take_all && key == threshold;
      int at_total = 0, kept_total = 0;
      const int at_before = block_flag_scan(at, at_total);
      const bool taken = above || (at && ties_seen + at_before < ties);
      const T v = candidate ? T(load_value(row[j])) + bias[j] : T(0);
      const bool entry = taken && v > T(0);
      const int position = block_flag_scan(entry, kept_total);
      if (entry) {
        slot_cols[r * k + written + position] = static_cast<int32_t>(j);
        slot_vals[r * k + written + position] = v;
      }
      ties_seen += at_total;
      written += kept_total;
    }
    if (threadIdx.x == 0) counts[r] = static_cast<int32_t>(written);
    __syncthreads();  // `state` is rewritten for the next row
  }
}

template <typename T>
__global__ void pack_slots_kernel(int32_t* cols_out, T* vals_out, const int32_t* row_ptr, const int32_t* counts,
                                  const int32_t* slot_cols, const T* slot_vals, int64_t rows, int64_t k) {
  for (int64_t i = thread_index(); i < rows * k; i += grid_stride()) {
    const int64_t r = i / k, q = i % k;
    if (q < counts[r]) {
      cols_out[row_ptr[r] + q] = slot_cols[i];
      vals_out[row_ptr[r] + q] = slot_vals[i];
    }
  }
}

template <typename T, typename P>
void topk_select_typed(SparseFeatures& s, const P* pre, const T* bias, const T* allowed, int64_t rows, int64_t cols,
                       int64_t k, int64_t row0) {
  int32_t* row_ptr = s.row_ptr.data<int32_t>() + row0;
  if (rows == 0) {
    if (row0 == 0) SAE_CUDA_CHECK(cudaMemsetAsync(row_ptr, 0, sizeof(int32_t), cuda_stream()));
    return;
  }
  const int64_t slot = std::min(k, cols);
  DeviceBuffer slot_cols(static_cast<size_t>(rows * slot) * sizeof(int32_t));
  DeviceBuffer slot_vals(static_cast<size_t>(rows * slot) * sizeof(T));
  DeviceBuffer counts(static_cast<size_t>(rows) * sizeof(int32_t));
  int32_t* count = static_cast<int32_t*>(counts.ptr);
  topk_rows_kernel<<<grid_for(rows, 1), kBlock, 0, cuda_stream()>>>(static_cast<int32_t*>(slot_cols.ptr),
                                                                   static_cast<T*>(slot_vals.ptr), count, pre, bias,
                                                                   allowed, rows, cols, slot);
  SAE_CUDA_CHECK_LAUNCH();
  offsets_from_counts_kernel<<<1, kBlock, 0, cuda_stream()>>>(row_ptr, count, rows, row0 == 0);
  SAE_CUDA_CHECK_LAUNCH();
  pack_slots_kernel<<<grid_for(rows * slot), kBlock, 0, cuda_stream()>>>(
      s.cols.data<int32_t>(), s.row_vals.data<T>(), row_ptr, count, static_cast<int32_t*>(slot_cols.ptr),
      static_cast<T*>(slot_vals.ptr), rows, slot);
  SAE_CUDA_CHECK_LAUNCH();
}

// ---- batchtopk_select ----

template <typename Key>
struct FlatState {
  Key prefix, mask;
  long long rank;  // after the last pass: the ties to take at the threshold key `prefix`
  int take_all;    // every positive value is taken (prefix = the key of 0, no ties)
};

// Each block's histogram of the next digit of the keys of relu(P) > 0 that match the prefix.
template <typename T, typename P>
__global__ void flat_histogram_kernel(int* partial, const P* pre, const T* bias, int64_t rows, int64_t cols,
                                      const FlatState<KeyOf<T>>* state, int shift) {
  using Key = KeyOf<T>;
  __shared__ int warp_hist[kSelectWarps][kDigits];
  if (state->take_all) return;  // decided in an earlier pass (uniform over the grid)
  const int warp = threadIdx.x / 32;
  for (int b = threadIdx.x % 32; b < kDigits; b += 32) warp_hist[warp][b] = 0;
  __syncthreads();
  const Key prefix = state->prefix, mask = state->mask;
  const int64_t total = rows * cols;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x; base < total; base += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = base + threadIdx.x;
    int digit = -1;
    if (i < total) {
      const T v = T(load_value(pre[i])) + bias[i % cols];
      if (v > T(0)) {
        const Key key = order_key(v);
        if ((key & mask) == prefix) digit = int((key >> shift) & Key(kDigits - 1));
      }
    }
    warp_count_digit(warp_hist[warp], digit);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kDigits; b += blockDim.x) {
    int sum = 0;
    for (int w = 0; w < kSelectWarps; ++w) sum += warp_hist[w][b];
    partial[int64_t(blockIdx.x) * kDigits + b] = sum;
  }
}

template <typename T>
__global__ void flat_pick_digit_kernel(FlatState<KeyOf<T>>* state, const int* partial, int blocks, int shift,
                                       int64_t total, bool first_pass) {
  using Key = KeyOf<T>;
  __shared__ long long hist[kDigits];
  if (state->take_all) return;
  for (int b = threadIdx.x; b < kDigits; b += blockDim.x) {
    long long sum = 0;
    for (int blk = 0; blk < blocks; ++blk) sum += partial[int64_t(blk) * kDigits + b];
    hist[b] = sum;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  if (first_pass) {
    long long positives = 0;
    for (int b = 0; b < kDigits; ++b) positives += hist[b];
    if (positives <= total) {
      state->take_all = 1;
      state->prefix = order_key(T(0));
      state->rank = 0;
      return;
    }
  }
  long long above = 0;
  int digit = kDigits - 1;
  for (; digit > 0 && above + hist[digit] < state->rank; --digit) above += hist[digit];
  state->rank -= above;
  state->prefix |= Key(digit) << shift;
  state->mask |= Key(kDigits - 1) << shift;
}

// Per row: values above the threshold key and at it.
template <typename T, typename P>
__global__ void flat_row_counts_kernel(long long* above, long long* at, const P* pre, const T* bias, int64_t rows,
                                       int64_t cols, const FlatState<KeyOf<T>>* state) {
  using Key = KeyOf<T>;
  const Key threshold = state->prefix;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t gt = 0, eq = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const T v = T(load_value(pre[r * cols + j])) + bias[j];
      if (!(v > T(0))) continue;
      const Key key = order_key(v);
      gt += key > threshold ? 1 : 0;
      eq += key == threshold ? 1 : 0;
    }
    gt = block_sum(gt);
    eq = block_sum(eq);
    if (threadIdx.x == 0) {
      above[r] = gt;
      at[r] = eq;
    }
  }
}

// One thread: the ties go to the rows in order; row_ptr from the rows' entry counts.
template <typename T>
__global__ void flat_row_offsets_kernel(int32_t* row_ptr, const long long* above, long long* at, int64_t rows,
                                        const FlatState<KeyOf<T>>* state) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  long long ties_left = state->rank;
  row_ptr[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const long long take = at[r] < ties_left ? at[r] : ties_left;
    ties_left -= take;
    at[r] = take;
    row_ptr[r + 1] = static_cast<int32_t>(row_ptr[r] + above[r] + take);
  }
}

template <typename T, typename P>
__global__ void flat_write_kernel(int32_t* cols_out, T* vals_out, const int32_t* row_ptr, const long long* take,
                                  const P* pre, const T* bias, int64_t rows, int64_t cols,
                                  const FlatState<KeyOf<T>>* state) {
  using Key = KeyOf<T>;
  const Key threshold = state->prefix;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    long long ties_seen = 0, written = row_ptr[r];
    const long long ties = take[r];
    for (int64_t j0 = 0; j0 < cols; j0 += blockDim.x) {
      const int64_t j = j0 + threadIdx.x;
      const T v = j < cols ? T(load_value(pre[r * cols + j])) + bias[j] : T(0);
      const Key key = order_key(v);
      const bool positive = v > T(0);
      const bool above = positive && key > threshold, at = positive && key == threshold;
      int at_total = 0, kept_total = 0;
      const int at_before = block_flag_scan(at, at_total);
      const bool entry = above || (at && ties_seen + at_before < ties);
      const int position = block_flag_scan(entry, kept_total);
      if (entry) {
        cols_out[written + position] = static_cast<int32_t>(j);
        vals_out[written + position] = v;
      }
      ties_seen += at_total;
      written += kept_total;
    }
  }
}

template <typename T, typename P>
void batchtopk_select_typed(SparseFeatures& s, const P* pre, const T* bias, int64_t rows, int64_t cols,
                            int64_t total) {
  using Key = KeyOf<T>;
  int32_t* row_ptr = s.row_ptr.data<int32_t>();
  if (rows == 0 || cols == 0) {
    SAE_CUDA_CHECK(cudaMemsetAsync(row_ptr, 0, (rows + 1) * sizeof(int32_t), cuda_stream()));
    return;
  }
  const int blocks = grid_for(rows * cols);
  DeviceBuffer state_buffer(sizeof(FlatState<Key>));
  DeviceBuffer partial(static_cast<size_t>(blocks) * kDigits * sizeof(int));
  DeviceBuffer above(static_cast<size_t>(rows) * sizeof(long long)), at(static_cast<size_t>(rows) * sizeof(long long));
  FlatState<Key>* state = static_cast<FlatState<Key>*>(state_buffer.ptr);
  const FlatState<Key> start{Key(0), Key(0), static_cast<long long>(total), 0};
  SAE_CUDA_CHECK(cudaMemcpyAsync(state, &start, sizeof start, cudaMemcpyHostToDevice, cuda_stream()));
  for (int pass = 0; pass * kDigitBits < int(8 * sizeof(Key)); ++pass) {
    const int shift = int(8 * sizeof(Key)) - kDigitBits * (pass + 1);
    flat_histogram_kernel<T><<<blocks, kBlock, 0, cuda_stream()>>>(static_cast<int*>(partial.ptr), pre, bias, rows, cols,
                                                                state, shift);
    SAE_CUDA_CHECK_LAUNCH();
    flat_pick_digit_kernel<T><<<1, kBlock, 0, cuda_stream()>>>(state, static_cast<int*>(partial.ptr), blocks, shift,
                                                               total, pass == 0);
    SAE_CUDA_CHECK_LAUNCH();
  }
  long long* gt = static_cast<long long*>(above.ptr);
  long long* eq = static_cast<long long*>(at.ptr);
  flat_row_counts_kernel<T><<<grid_for(rows, 1), kBlock, 0, cuda_stream()>>>(gt, eq, pre, bias, rows, cols, state);
  SAE_CUDA_CHECK_LAUNCH();
  flat_row_offsets_kernel<T><<<1, 32, 0, cuda_stream()>>>(row_ptr, gt, eq, rows, state);
  SAE_CUDA_CHECK_LAUNCH();
  flat_write_kernel<T><<<grid_for(rows, 1), kBlock, 0, cuda_stream()>>>(s.cols.data<int32_t>(), s.row_vals.data<T>(),
                                                                     row_ptr, eq, pre, bias, rows, cols, state);
  SAE_CUDA_CHECK_LAUNCH();
}

template <typename T>
const T* optional_data(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

void topk_select_cuda(SparseFeatures& s, const Tensor& pre, const Tensor& bias, const Tensor& allowed, int64_t k,
                      int64_t row0) {
  dispatch_float_or_bf16(pre, "topk_select", [&](auto zero, const auto* p) {
    using T = decltype(zero);
    topk_select_typed(s, p, bias.data<T>(), optional_data<T>(allowed), pre.size(0), pre.size(1), k, row0);
  });
}

void batchtopk_select_cuda(SparseFeatures& s, const Tensor& pre, const Tensor& bias, int64_t total) {
  dispatch_float_or_bf16(pre, "batchtopk_select", [&](auto zero, const auto* p) {
    using T = decltype(zero);
    batchtopk_select_typed(s, p, bias.data<T>(), pre.size(0), pre.size(1), total);
  });
}

}  // namespace sae
