// CUDA kernels of the feature statistics (sae_kernels.h, "feature statistics"; formulas in
// feature_stats_math.h), registered in cuda_kernels.cu's table. Each computes exactly what its CPU
// twin in cpu_stats_kernels.cpp computes (comparisons and counts only, no sums of floats): one thread
// per feature reads its rows in order, so a feature's candidates and histogram have one owner and
// come out bit for bit as on the CPU. No atomics.
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

template <typename T>
__global__ void scan_dense_kernel(ScanOut<T> o, const T* f, const T* threshold, const int32_t* group, int64_t n,
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
    for (int i = 0; i < kAhead; ++i) v[i] = r0 + i < n ? f[(r0 + i) * features + j] : T(0);
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

template <typename T>
__global__ void values_dense_kernel(T* out, const T* f, const int32_t* rows, const int32_t* features, int64_t m,
                                    int64_t n, int64_t f_count) {
  for (int64_t k = thread_index(); k < m; k += grid_stride()) {
    const int64_t r = rows[k], j = features[k];
    out[k] = r >= 0 && r < n && j >= 0 && j < f_count ? f[r * f_count + j] : T(NAN);
  }
}

template <typename T>
__global__ void values_sparse_kernel(T* out, const int32_t* col_ptr, const int32_t* entry_rows, const T* vals,
                                     int64_t rows_limit, const int32_t* rows, const int32_t* features, int64_t m,
                                     int64_t f_count) {
  for (int64_t k = thread_index(); k < m; k += grid_stride()) {
    const int32_t r = rows[k], j = features[k];
    if (r < 0 || r >= rows_limit || j < 0 || j >= f_count) {
      out[k] = T(NAN);
      continue;
    }
    int32_t lo = col_ptr[j], hi = col_ptr[j + 1];  // the first entry with row >= r, by bisection
    while (lo < hi) {
      const int32_t mid = lo + (hi - lo) / 2;
      if (entry_rows[mid] < r)
        lo = mid + 1;
      else
        hi = mid;
    }
    out[k] = lo < col_ptr[j + 1] && entry_rows[lo] == r ? vals[lo] : T(0);
  }
}

}  // namespace

void feature_stats_scan_cuda(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                             const Tensor& group) {
  const int64_t features = f.size(1);
  if (features == 0) return;
  dispatch_float(f.dtype(), "feature_stats_scan", [&](auto zero) {
    using T = decltype(zero);
    scan_dense_kernel<T><<<static_cast<int>(ceil_div(features, kBlock)), kBlock, 0, cuda_stream()>>>(
        scan_out<T>(out, histogram), f.data<T>(), threshold.data<T>(), group.data<int32_t>(), f.size(0), features);
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

void feature_values_at_cuda(Tensor& out, const Tensor& f, const Tensor& rows, const Tensor& features) {
  const int64_t m = out.numel();
  if (m == 0) return;
  dispatch_float(f.dtype(), "feature_values_at", [&](auto zero) {
    using T = decltype(zero);
    values_dense_kernel<T><<<grid_for(m), kBlock, 0, cuda_stream()>>>(out.data<T>(), f.data<T>(), rows.data<int32_t>(),
                                                                      features.data<int32_t>(), m, f.size(0), f.size(1));
  });
  SAE_CUDA_CHECK_LAUNCH();
}

void feature_values_at_sparse_cuda(Tensor& out, const SparseFeatures& s, int64_t rows_limit, const Tensor& rows,
                                   const Tensor& features) {
  const int64_t m = out.numel();
  if (m == 0) return;
  dispatch_float(s.vals.dtype(), "feature_values_at_sparse", [&](auto zero) {
    using T = decltype(zero);
    values_sparse_kernel<T><<<grid_for(m), kBlock, 0, cuda_stream()>>>(
        out.data<T>(), s.col_ptr.data<int32_t>(), s.rows.data<int32_t>(), s.vals.data<T>(), rows_limit,
        rows.data<int32_t>(), features.data<int32_t>(), m, s.col_ptr.numel() - 1);
  });
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace sae
