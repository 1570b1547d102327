// CUDA kernels of the feature statistics (sae_kernels.h, "feature statistics"; formulas in
// feature_stats_math.h), registered in cuda_kernels.cu's table. Each computes exactly what its CPU
// twin in cpu_stats_kernels.cpp computes (comparisons and counts only, no sums of floats): one thread
// per feature reads its rows in order, so a feature's candidates, histogram and top list have one
// owner and come out bit for bit as on the CPU. No atomics but the merge's error bits.
// Dense scan: the threads of a warp read neighbouring features of one row (coalesced). A thread
// counts its histogram in local memory and adds it to the f64 histogram once at the end.
// Letters: N rows (tokens), F features, K candidates per feature, B histogram bins.
#include <cmath>

#include "sae/step/feature_stats_math.h"
#include "sae/step/stats_kernels.h"
#include "tensor/cuda/common.cuh"
#include "tensor/dispatch.h"

namespace sae {

namespace {

template <typename T>
__device__ inline void take(const ScanOut<T>& o, int64_t j, T v, int32_t r, T threshold, const int32_t* group,
                            int32_t& count, unsigned int* local_histogram) {
  ++local_histogram[histogram_bin(static_cast<float>(v))];
  if (v > threshold) {
    const int64_t at = j * o.capacity;
    offer_candidate(o.values + at, o.rows + at, o.groups + at, count, o.capacity, v, r, group[r]);
  }
}

template <typename T>
__device__ inline void finish(const ScanOut<T>& o, int64_t j, int32_t count, const unsigned int* local_histogram) {
  o.count[j] = count;
  double* h = o.histogram + j * kHistogramBins;
  for (int b = 0; b < kHistogramBins; ++b)
    if (local_histogram[b] != 0) h[b] += double(local_histogram[b]);
}

// f stored as S (T, or bf16 widened as read).
template <typename T, typename S>
__global__ void scan_dense_kernel(ScanOut<T> o, const S* f, const T* threshold, const int32_t* group, int64_t n,
                                  int64_t features) {
  const int64_t j = thread_index();
  if (j >= features) return;
  unsigned int local_histogram[kHistogramBins];
  for (int b = 0; b < kHistogramBins; ++b) local_histogram[b] = 0;
  int32_t count = 0;
  const T limit = threshold[j];
  // kAhead rows' loads issued before any is used: the loop was one memory latency per row.
  constexpr int kAhead = 8;
  for (int64_t r0 = 0; r0 < n; r0 += kAhead) {
    T v[kAhead];
#pragma unroll
    for (int i = 0; i < kAhead; ++i) v[i] = r0 + i < n ? T(load_value(f[(r0 + i) * features + j])) : T(0);
#pragma unroll
    for (int i = 0; i < kAhead; ++i)
      if (v[i] > T(0)) take(o, j, v[i], static_cast<int32_t>(r0 + i), limit, group, count, local_histogram);
  }
  finish(o, j, count, local_histogram);
}

template <typename T>
__global__ void scan_sparse_kernel(ScanOut<T> o, const int32_t* col_ptr, const int32_t* rows, const T* vals,
                                   int64_t n, const T* threshold, const int32_t* group, int64_t features) {
  const int64_t j = thread_index();
  if (j >= features) return;
  unsigned int local_histogram[kHistogramBins];
  for (int b = 0; b < kHistogramBins; ++b) local_histogram[b] = 0;
  int32_t count = 0;
  const T limit = threshold[j];
  for (int32_t e = col_ptr[j]; e < col_ptr[j + 1] && rows[e] < n; ++e)
    if (vals[e] > T(0)) take(o, j, vals[e], rows[e], limit, group, count, local_histogram);
  finish(o, j, count, local_histogram);
}

// One thread per feature merges its candidates into its list (the same function as the CPU's);
// what went wrong is or-ed into lists.error, read by the host when it reads the lists.
__global__ void merge_kernel(FeatureTopListsView l, FeatureStatsBatchView b, int32_t* error) {
  const int64_t j = thread_index();
  if (j >= b.features) return;
  const int32_t bits = merge_into_top_list(l, b, j, __int_as_float(0x7fc00000));
  if (bits != 0) atomicOr(error, bits);
}

void merge_all(FeatureTopLists& lists, const FeatureStatsBatchView& b) {
  if (b.features == 0) return;
  merge_kernel<<<static_cast<int>(ceil_div(b.features, kBlock)), kBlock, 0, cuda_stream()>>>(
      top_lists_view(lists), b, lists.error.data<int32_t>());
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void feature_stats_scan_cuda(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                             const Tensor& group) {
  const int64_t features = f.size(1);
  if (features == 0) return;
  dispatch_compute_and_storage(f.dtype(), "feature_stats_scan", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    scan_dense_kernel<T, S><<<static_cast<int>(ceil_div(features, kBlock)), kBlock, 0, cuda_stream()>>>(
        scan_out<T>(out, histogram), f.data<S>(), threshold.data<T>(), group.data<int32_t>(), f.size(0), features);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void feature_stats_scan_sparse_cuda(FeatureCandidates& out, Tensor& histogram, const SparseFeatures& s, int64_t rows,
                                    const Tensor& threshold, const Tensor& group) {
  const int64_t features = histogram.size(0);
  if (features == 0) return;
  dispatch_float(s.vals.dtype(), "feature_stats_scan_sparse", [&](auto zero) {
    using T = decltype(zero);
    scan_sparse_kernel<T><<<static_cast<int>(ceil_div(features, kBlock)), kBlock, 0, cuda_stream()>>>(
        scan_out<T>(out, histogram), s.col_ptr.data<int32_t>(), s.rows.data<int32_t>(), s.vals.data<T>(), rows,
        threshold.data<T>(), group.data<int32_t>(), features);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void feature_stats_merge_cuda(FeatureTopLists& lists, const FeatureCandidates& candidates, const FeatureStatsRows& rows,
                              const Tensor& f) {
  merge_all(lists, stats_batch_view(candidates, rows, f));
}

void feature_stats_merge_sparse_cuda(FeatureTopLists& lists, const FeatureCandidates& candidates,
                                     const FeatureStatsRows& rows, const SparseFeatures& s, int64_t n) {
  merge_all(lists, stats_batch_view(candidates, rows, s, n));
}

namespace {
template <typename T>
__global__ void latent_clock_kernel(double* clock, T* dead, const T* fired, int64_t features, double tokens,
                                    double dead_tokens) {
  for (int64_t i = thread_index(); i < features; i += grid_stride()) {
    const double c = fired[i] > T(0) ? 0.0 : clock[i] + tokens;
    clock[i] = c;
    if (dead) dead[i] = c >= dead_tokens ? T(1) : T(0);
  }
}
}  // namespace

void latent_clock_cuda(Tensor& clock, Tensor& dead, const Tensor& counts, double tokens, double dead_tokens) {
  const int64_t features = clock.numel();
  if (features == 0) return;
  dispatch_float(counts.dtype(), "latent_clock", [&](auto zero) {
    using T = decltype(zero);
    latent_clock_kernel<<<grid_for(features), kBlock, 0, cuda_stream()>>>(
        clock.data<double>(), dead.defined() ? dead.data<T>() : nullptr, counts.data<T>(), features, tokens,
        dead_tokens);
    SAE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace sae
