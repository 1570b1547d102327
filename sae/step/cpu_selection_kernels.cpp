// CPU kernels of the selection family (sae_kernels.h): TopK's (and AuxK's) per-row top k and
// BatchTopK's batch top k, straight into by-token entry lists. OpenMP across rows; ties go to the
// lower index, so the lists do not depend on the number of threads. Inputs were validated by the
// front-end (sae_ops.cpp).
// Letters: N tokens (rows), F features (columns), k the latents kept per row.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "sae/step/cpu_helpers.h"
#include "sae/step/kernel_decls.h"
#include "sae/step/selection_math.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// ---- per-row top k (TopK, AuxK) ----

template <typename T>
struct Candidate {
  T value;
  int32_t index;
};

// a before b: larger value, then lower index. As a heap comparator it keeps the worst kept
// candidate at the front.
template <typename T>
bool better(const Candidate<T>& a, const Candidate<T>& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

template <typename T>
struct KeptRow {
  Candidate<T>* heap;
  int64_t size = 0, k;
  // Columns are offered in increasing order, so a value equal to the worst kept one (which has a
  // lower index) never displaces it.
  void offer(T value, int32_t index) {
    if (!(value == value)) return;  // NaN is never selected
    if (size < k) {
      heap[size++] = {value, index};
      std::push_heap(heap, heap + size, better<T>);
    } else if (value > heap[0].value) {
      std::pop_heap(heap, heap + size, better<T>);
      heap[size - 1] = {value, index};
      std::push_heap(heap, heap + size, better<T>);
    }
  }
};

// P: the pre-activations' element type (T, or BFloat16 with T float).
template <typename T, typename P>
void topk_select_typed(int32_t* row_ptr, int32_t* cols_out, T* vals_out, const P* pre, const T* bias,
                       const T* allowed, int64_t n, int64_t cols, int64_t k, int64_t row0) {
  if (row0 == 0) row_ptr[0] = 0;
  // The candidate columns, once: all of them, or the allowed ones (AuxK: usually few).
  thread_local std::vector<int32_t> candidates_buffer;
  int32_t* candidates = nullptr;
  int64_t n_candidates = cols;
  if (allowed) {
    candidates = grow(candidates_buffer, cols);
    n_candidates = 0;
    for (int64_t j = 0; j < cols; ++j)
      if (allowed[j] != T(0)) candidates[n_candidates++] = static_cast<int32_t>(j);
  }
  const int64_t keep = std::min(k, n_candidates);
  thread_local std::vector<int32_t> slot_cols_buffer, counts_buffer;
  thread_local std::vector<T> slot_vals_buffer;
  int32_t* slot_cols = grow(slot_cols_buffer, n * std::max<int64_t>(keep, 1));
  T* slot_vals = grow(slot_vals_buffer, n * std::max<int64_t>(keep, 1));
  int32_t* counts = grow(counts_buffer, n);
#pragma omp parallel if (n * n_candidates >= kParallelMin)
  {
    std::vector<Candidate<T>> heap_buffer(std::max<int64_t>(keep, 1));
#pragma omp for schedule(dynamic, 8)
    for (int64_t r = 0; r < n; ++r) {
      KeptRow<T> kept{heap_buffer.data(), 0, keep};
      const P* row = pre + r * cols;
      auto value = [&](int64_t j) { return T(load_value(row[j])) + bias[j]; };
      if (keep > 0 && candidates) {
        for (int64_t c = 0; c < n_candidates; ++c) kept.offer(value(candidates[c]), candidates[c]);
      } else if (keep > 0) {
        int64_t j = 0;
        for (; j < cols && kept.size < keep; ++j) kept.offer(value(j), static_cast<int32_t>(j));
#if defined(__AVX2__)
        // Once k are kept, most values are below the worst of them: test 8 at a time.
        if constexpr (std::is_same_v<T, float>) {
          for (; j + 8 <= cols; j += 8) {
            __m256 p;
            if constexpr (std::is_same_v<P, float>) {
              p = _mm256_loadu_ps(row + j);
            } else {  // bfloat16: its bits are the top half of the float32's
              const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j));
              p = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
            }
            const __m256 v = _mm256_add_ps(p, _mm256_loadu_ps(bias + j));
            unsigned mask = static_cast<unsigned>(
                _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(kept.heap[0].value), _CMP_GT_OQ)));
            while (mask != 0) {
              const int64_t c = j + __builtin_ctz(mask);
              mask &= mask - 1;
              kept.offer(value(c), static_cast<int32_t>(c));
            }
          }
        }
#endif
        for (; j < cols; ++j) kept.offer(value(j), static_cast<int32_t>(j));
      }
      // Those with P > 0 become entries, in feature order.
      int32_t* out_cols = slot_cols + r * keep;
      T* out_vals = slot_vals + r * keep;
      std::sort(kept.heap, kept.heap + kept.size,
                [](const Candidate<T>& a, const Candidate<T>& b) { return a.index < b.index; });
      int32_t count = 0;
      for (int64_t q = 0; q < kept.size; ++q)
        if (kept.heap[q].value > T(0)) {
          out_cols[count] = kept.heap[q].index;
          out_vals[count] = kept.heap[q].value;
          ++count;
        }
      counts[r] = count;
    }
  }
  for (int64_t r = 0; r < n; ++r) row_ptr[row0 + r + 1] = row_ptr[row0 + r] + counts[r];
#pragma omp parallel for if (n * keep >= kParallelMin)
  for (int64_t r = 0; r < n; ++r) {
    const int32_t begin = row_ptr[row0 + r];
    std::copy(slot_cols + r * keep, slot_cols + r * keep + counts[r], cols_out + begin);
    std::copy(slot_vals + r * keep, slot_vals + r * keep + counts[r], vals_out + begin);
  }
}

// ---- batch top k (BatchTopK) ----
//
// The `total`-th largest relu(P) of the batch is found by its integer key (selection_math.h), 16 bits at
// a time: a histogram of the next 16 bits among the keys that share the bits found so far, then the
// bucket where the running count from the top reaches the rank. Then each row counts its values
// above the key and equal to it; the ties go to the rows in order until `total` are taken.

template <typename T, typename P>
void batchtopk_select_typed(int32_t* row_ptr, int32_t* cols_out, T* vals_out, const P* pre, const T* bias,
                            int64_t n, int64_t cols, int64_t total) {
  using Key = decltype(order_key(T(0)));
  constexpr int kKeyBits = 8 * sizeof(Key), kDigitBits = 16;
  constexpr int64_t kBins = int64_t(1) << kDigitBits;
  const bool threaded = n * cols >= kParallelMin;
  const int threads = threaded ? omp_get_max_threads() : 1;
  thread_local std::vector<int64_t> histogram_buffer, gt_buffer, eq_buffer;
  int64_t* histograms = grow(histogram_buffer, threads * kBins);
  int64_t* count_gt = grow(gt_buffer, n);
  int64_t* count_eq = grow(eq_buffer, n);

  Key prefix = 0, prefix_mask = 0;
  int64_t rank = total;      // rank of the wanted key among those that share the prefix (1 = largest)
  Key threshold = order_key(T(0));
  int64_t ties = 0;          // how many values equal to the threshold key are taken
  for (int pass = 0; pass * kDigitBits < kKeyBits; ++pass) {
    const int shift = kKeyBits - kDigitBits * (pass + 1);
    std::fill(histograms, histograms + threads * kBins, int64_t(0));
#pragma omp parallel if (threaded)
    {
      int64_t* mine = histograms + int64_t(omp_get_thread_num()) * kBins;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < cols; ++j) {
          const T v = T(load_value(pre[r * cols + j])) + bias[j];
          if (!(v > T(0))) continue;
          const Key key = order_key(v);
          if ((key & prefix_mask) == prefix) ++mine[(key >> shift) & Key(kBins - 1)];
        }
    }
    for (int t = 1; t < threads; ++t)
      for (int64_t b = 0; b < kBins; ++b) histograms[b] += histograms[t * kBins + b];
    if (pass == 0) {
      int64_t positives = 0;
      for (int64_t b = 0; b < kBins; ++b) positives += histograms[b];
      if (positives <= total) break;  // every positive value is taken: threshold key of 0, no ties
    }
    int64_t above = 0, digit = kBins - 1;
    for (; digit > 0 && above + histograms[digit] < rank; --digit) above += histograms[digit];
    rank -= above;
    prefix |= Key(digit) << shift;
    prefix_mask |= Key(kBins - 1) << shift;
    if (shift == 0) {
      threshold = prefix;
      ties = rank;
    }
  }
  // Per row: values above the threshold key, and equal to it.
#pragma omp parallel for schedule(static) if (threaded)
  for (int64_t r = 0; r < n; ++r) {
    int64_t gt = 0, eq = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const T v = T(load_value(pre[r * cols + j])) + bias[j];
      if (!(v > T(0))) continue;
      const Key key = order_key(v);
      gt += key > threshold;
      eq += key == threshold;
    }
    count_gt[r] = gt;
    count_eq[r] = eq;
  }
  row_ptr[0] = 0;
  int64_t ties_left = ties;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t take = std::min(count_eq[r], ties_left);
    ties_left -= take;
    count_eq[r] = take;  // from here: the ties this row takes
    row_ptr[r + 1] = static_cast<int32_t>(row_ptr[r] + count_gt[r] + take);
  }
#pragma omp parallel for schedule(static) if (threaded)
  for (int64_t r = 0; r < n; ++r) {
    int32_t e = row_ptr[r];
    int64_t ties_here = count_eq[r];
    for (int64_t j = 0; j < cols; ++j) {
      const T v = T(load_value(pre[r * cols + j])) + bias[j];
      if (!(v > T(0))) continue;
      const Key key = order_key(v);
      if (key > threshold || (key == threshold && ties_here-- > 0)) {
        cols_out[e] = static_cast<int32_t>(j);
        vals_out[e] = v;
        ++e;
      }
    }
  }
}
template <typename T>
const T* optional_data(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

void topk_select_cpu(SparseFeatures& s, const Tensor& pre, const Tensor& bias, const Tensor& allowed, int64_t k,
                     int64_t row0) {
  dispatch_float_or_bf16(pre, "topk_select", [&](auto zero, const auto* p) {
    using T = decltype(zero);
    topk_select_typed(s.row_ptr.data<int32_t>(), s.cols.data<int32_t>(), s.row_vals.data<T>(), p, bias.data<T>(),
                      optional_data<T>(allowed), pre.size(0), pre.size(1), k, row0);
  });
}

void batchtopk_select_cpu(SparseFeatures& s, const Tensor& pre, const Tensor& bias, int64_t total) {
  dispatch_float_or_bf16(pre, "batchtopk_select", [&](auto zero, const auto* p) {
    using T = decltype(zero);
    batchtopk_select_typed(s.row_ptr.data<int32_t>(), s.cols.data<int32_t>(), s.row_vals.data<T>(), p,
                           bias.data<T>(), pre.size(0), pre.size(1), total);
  });
}

}  // namespace sae
