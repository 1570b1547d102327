// CPU kernels of the feature statistics (sae_kernels.h, "feature statistics"; formulas in
// feature_stats_math.h): one pass over the batch's activations that fills every feature's histogram
// and its list of candidates, and the merge of those into the top lists. Each feature is owned by one
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

// f stored as S (T, or bf16 widened as read).
template <typename T, typename S>
void scan_dense_typed(ScanOut<T> o, const S* f, const T* threshold, const int32_t* group, int64_t n, int64_t features) {
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
        const S* row = f + r * features;
        for (int64_t j = t0; j < t1; ++j) {
          const T v = load_value(row[j]);
          if (v > T(0)) take(o, j, v, static_cast<int32_t>(r), threshold, group);
        }
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

// Below this many features the merge runs on one thread.
constexpr int64_t kParallelFeatures = 1024;

void merge_all(FeatureTopLists& lists, const FeatureStatsBatchView& b) {
  const FeatureTopListsView l = top_lists_view(lists);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  int32_t error = 0;
#pragma omp parallel for schedule(static) reduction(| : error) if (b.features >= kParallelFeatures)
  for (int64_t j = 0; j < b.features; ++j) error |= merge_into_top_list(l, b, j, nan);
  lists.error.data<int32_t>()[0] |= error;
}

}  // namespace

void feature_stats_scan_cpu(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                            const Tensor& group) {
  dispatch_compute_and_storage(f.dtype(), "feature_stats_scan", [&](auto zero, auto stored) {
    using T = decltype(zero);
    using S = decltype(stored);
    scan_dense_typed(scan_out<T>(out, histogram), f.data<S>(), threshold.data<T>(), group.data<int32_t>(), f.size(0),
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

void feature_stats_merge_cpu(FeatureTopLists& lists, const FeatureCandidates& candidates, const FeatureStatsRows& rows,
                             const Tensor& f) {
  merge_all(lists, stats_batch_view(candidates, rows, f));
}

void feature_stats_merge_sparse_cpu(FeatureTopLists& lists, const FeatureCandidates& candidates,
                                    const FeatureStatsRows& rows, const SparseFeatures& s, int64_t n) {
  merge_all(lists, stats_batch_view(candidates, rows, s, n));
}

void latent_clock_cpu(Tensor& clock, Tensor& dead, const Tensor& counts, double tokens, double dead_tokens) {
  dispatch_float(counts.dtype(), "latent_clock", [&](auto zero) {
    using T = decltype(zero);
    double* c = clock.data<double>();
    const T* fired = counts.data<T>();
    T* d = dead.defined() ? dead.data<T>() : nullptr;
    const int64_t features = clock.numel();
#pragma omp parallel for if (features >= kParallelMin)
    for (int64_t i = 0; i < features; ++i) {
      c[i] = fired[i] > T(0) ? 0.0 : c[i] + tokens;
      if (d) d[i] = c[i] >= dead_tokens ? T(1) : T(0);
    }
  });
}

}  // namespace sae
