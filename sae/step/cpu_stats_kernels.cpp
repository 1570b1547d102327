// CPU kernels of the feature statistics (sae_kernels.h, "feature statistics"; formulas in
// feature_stats_math.h): one pass over the batch's activations that fills every feature's histogram
// and its list of candidates, and the look-up of single activations. Each feature is owned by one
// thread, which reads its rows in order, so the results do not depend on the number of threads.
// Inputs were validated by the front-end (stats_ops.cpp).
// Letters: N rows (tokens), F features, K candidates per feature, B histogram bins.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "sae/step/feature_stats_math.h"
#include "sae/step/stats_kernels.h"
#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"

namespace sae {

namespace {

// One value v of feature j at row r: counted in the histogram, offered to the candidates.
template <typename T>
inline void take(const ScanOut<T>& o, int64_t j, T v, int32_t r, const T* threshold, const int32_t* group) {
  o.histogram[j * kHistogramBins + histogram_bin(static_cast<float>(v))] += 1.0;
  if (v > threshold[j]) {
    const int64_t at = j * o.capacity;
    offer_candidate(o.values + at, o.rows + at, o.groups + at, o.count[j], o.capacity, v, r, group[r]);
  }
}

// Features per tile of the dense scan: the tile's histograms (256 x 48 doubles, 96 KiB) and
// candidate lists stay in L2 while its rows stream by, each row's part 16 cache lines in a row (so
// the prefetcher follows). Row by row over all of a thread's features, every positive value hit
// another feature's histogram line, far apart (at F 10000, 1.9 MiB of them per thread). Measured
// with perf at F 10000, 218 tokens, every feature active, one thread: the scan took 4.5% of the
// step's samples row by row, 3.1% in tiles of 256 (6.0% in tiles of 16: a page per row).
constexpr int64_t kScanTile = 256;

template <typename T>
void scan_dense_typed(ScanOut<T> o, const T* f, const T* threshold, const int32_t* group, int64_t n, int64_t features) {
#pragma omp parallel if (n * features >= kParallelMin)
  {
    // Each thread owns a block of features (whole tiles) and reads its part of every row, rows in order.
    const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
    const int64_t tiles = (features + kScanTile - 1) / kScanTile;
    const int64_t j0 = std::min(features, tiles * thread / threads * kScanTile);
    const int64_t j1 = std::min(features, tiles * (thread + 1) / threads * kScanTile);
    for (int64_t j = j0; j < j1; ++j) o.count[j] = 0;
    for (int64_t t0 = j0; t0 < j1; t0 += kScanTile) {
      const int64_t t1 = std::min(j1, t0 + kScanTile);
      for (int64_t r = 0; r < n; ++r) {
        const T* row = f + r * features;
        for (int64_t j = t0; j < t1; ++j)
          if (row[j] > T(0)) take(o, j, row[j], static_cast<int32_t>(r), threshold, group);
      }
    }
  }
}

template <typename T>
void scan_sparse_typed(ScanOut<T> o, const int32_t* col_ptr, const int32_t* rows, const T* vals, int64_t n,
                       const T* threshold, const int32_t* group, int64_t features) {
#pragma omp parallel for schedule(static) if (features >= 256)
  for (int64_t j = 0; j < features; ++j) {
    o.count[j] = 0;
    // A feature's entries come in increasing row order; AuxK's rows (>= N) come last.
    for (int32_t e = col_ptr[j]; e < col_ptr[j + 1] && rows[e] < n; ++e)
      if (vals[e] > T(0)) take(o, j, vals[e], rows[e], threshold, group);
  }
}

// Look-ups of single activations: each a read far from the last (a cache miss), worth splitting from a
// few thousand on.
constexpr int64_t kParallelLookUps = 1 << 14;

template <typename T>
void values_dense_typed(T* out, const T* f, const int32_t* rows, const int32_t* features, int64_t m, int64_t n,
                        int64_t f_count) {
#pragma omp parallel for schedule(static) if (m >= kParallelLookUps)
  for (int64_t k = 0; k < m; ++k) {
    const int64_t r = rows[k], j = features[k];
    out[k] = r >= 0 && r < n && j >= 0 && j < f_count ? f[r * f_count + j] : std::numeric_limits<T>::quiet_NaN();
  }
}

template <typename T>
void values_sparse_typed(T* out, const int32_t* col_ptr, const int32_t* entry_rows, const T* vals, int64_t rows_limit,
                         const int32_t* rows, const int32_t* features, int64_t m, int64_t f_count) {
#pragma omp parallel for schedule(static) if (m >= kParallelLookUps)
  for (int64_t k = 0; k < m; ++k) {
    const int32_t r = rows[k], j = features[k];
    if (r < 0 || r >= rows_limit || j < 0 || j >= f_count) {
      out[k] = std::numeric_limits<T>::quiet_NaN();
      continue;
    }
    const int32_t* begin = entry_rows + col_ptr[j];
    const int32_t* end = entry_rows + col_ptr[j + 1];
    const int32_t* found = std::lower_bound(begin, end, r);
    out[k] = found != end && *found == r ? vals[found - entry_rows] : T(0);
  }
}

}  // namespace

void feature_stats_scan_cpu(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                            const Tensor& group) {
  dispatch_float(f.dtype(), "feature_stats_scan", [&](auto zero) {
    using T = decltype(zero);
    scan_dense_typed(scan_out<T>(out, histogram), f.data<T>(), threshold.data<T>(), group.data<int32_t>(), f.size(0),
                     f.size(1));
  });
}

void feature_stats_scan_sparse_cpu(FeatureCandidates& out, Tensor& histogram, const SparseFeatures& s, int64_t rows,
                                   const Tensor& threshold, const Tensor& group) {
  dispatch_float(s.vals.dtype(), "feature_stats_scan_sparse", [&](auto zero) {
    using T = decltype(zero);
    scan_sparse_typed(scan_out<T>(out, histogram), s.col_ptr.data<int32_t>(), s.rows.data<int32_t>(), s.vals.data<T>(),
                      rows, threshold.data<T>(), group.data<int32_t>(), histogram.size(0));
  });
}

void feature_values_at_cpu(Tensor& out, const Tensor& f, const Tensor& rows, const Tensor& features) {
  dispatch_float(f.dtype(), "feature_values_at", [&](auto zero) {
    using T = decltype(zero);
    values_dense_typed(out.data<T>(), f.data<T>(), rows.data<int32_t>(), features.data<int32_t>(), out.numel(),
                       f.size(0), f.size(1));
  });
}

void feature_values_at_sparse_cpu(Tensor& out, const SparseFeatures& s, int64_t rows_limit, const Tensor& rows,
                                  const Tensor& features) {
  dispatch_float(s.vals.dtype(), "feature_values_at_sparse", [&](auto zero) {
    using T = decltype(zero);
    values_sparse_typed(out.data<T>(), s.col_ptr.data<int32_t>(), s.rows.data<int32_t>(), s.vals.data<T>(), rows_limit,
                        rows.data<int32_t>(), features.data<int32_t>(), out.numel(), s.col_ptr.numel() - 1);
  });
}

}  // namespace sae
