// The kernels of sae_kernels.h's "feature statistics" entries, declared for the two tables that list
// them: cpu_kernels.cpp (the _cpu functions, defined in cpu_stats_kernels.cpp) and cuda_kernels.cu
// (the _cuda functions, defined in cuda_stats_kernels.cu). Everything else calls the front-end
// (sae_ops.h).
#pragma once
#include "sae/step/feature_stats_math.h"
#include "sae/step/sae_kernels.h"

namespace sae {

// The outputs of a scan as plain pointers, for the kernels of both backends.
template <typename T>
struct ScanOut {
  T* values;
  int32_t* rows;
  int32_t* groups;
  int32_t* count;
  double* histogram;
  int32_t capacity;
};

template <typename T>
ScanOut<T> scan_out(FeatureCandidates& out, Tensor& histogram) {
  return {out.values.data<T>(),    out.rows.data<int32_t>(), out.groups.data<int32_t>(),
          out.count.data<int32_t>(), histogram.data<double>(), static_cast<int32_t>(out.values.size(1))};
}

// The merge's lists and batch as plain pointers (feature_stats_math.h).
inline int64_t* int64_data(Tensor& t) { return static_cast<int64_t*>(t.raw()); }
inline const int64_t* int64_data(const Tensor& t) { return static_cast<const int64_t*>(t.raw()); }

inline FeatureTopListsView top_lists_view(FeatureTopLists& l) {
  return {l.value.data<float>(),         int64_data(l.key),       l.slot.data<int32_t>(),
          l.count.data<int32_t>(),       l.threshold.data<float>(), int64_data(l.story),
          int64_data(l.position),        int64_data(l.step),      l.pending_row.data<int32_t>(),
          l.tokens.data<int32_t>(),      l.values.data<float>(),  static_cast<int32_t>(l.value.size(1)),
          static_cast<int32_t>((l.tokens.size(2) - 1) / 2)};
}

// The batch of a merge: the candidates, the rows, and the features to look context values up in (f
// [N, F], or the by-feature lists of a sparse step's rows < n).
inline FeatureStatsBatchView stats_batch_view(const FeatureCandidates& c, const FeatureStatsRows& rows, int64_t n,
                                              int64_t features) {
  const bool known = rows.story.defined();
  FeatureStatsBatchView b{};
  b.candidate_values = c.values.data<float>();
  b.candidate_rows = c.rows.data<int32_t>();
  b.candidate_count = c.count.data<int32_t>();
  b.rows = n;
  b.story = known ? int64_data(rows.story) : nullptr;
  b.position = known ? int64_data(rows.position) : nullptr;
  b.tokens = known ? rows.tokens.data<int32_t>() : nullptr;
  b.step = rows.step;
  b.unknown_base = rows.unknown_base;
  b.features = features;
  return b;
}

inline FeatureStatsBatchView stats_batch_view(const FeatureCandidates& c, const FeatureStatsRows& rows,
                                              const Tensor& f) {
  FeatureStatsBatchView b = stats_batch_view(c, rows, f.size(0), f.size(1));
  if (f.dtype() == DType::BF16)
    b.f_bf16 = f.data<BFloat16>();
  else
    b.f = f.data<float>();
  return b;
}

inline FeatureStatsBatchView stats_batch_view(const FeatureCandidates& c, const FeatureStatsRows& rows,
                                              const SparseFeatures& s, int64_t n) {
  FeatureStatsBatchView b = stats_batch_view(c, rows, n, s.col_ptr.numel() - 1);
  b.col_ptr = s.col_ptr.data<int32_t>();
  b.entry_rows = s.rows.data<int32_t>();
  b.entry_values = s.vals.data<float>();
  return b;
}

void feature_stats_scan_cpu(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                            const Tensor& group);
void feature_stats_scan_sparse_cpu(FeatureCandidates& out, Tensor& histogram, const SparseFeatures& s, int64_t rows,
                                   const Tensor& threshold, const Tensor& group);
void feature_stats_merge_cpu(FeatureTopLists& lists, const FeatureCandidates& candidates, const FeatureStatsRows& rows,
                             const Tensor& f);
void feature_stats_merge_sparse_cpu(FeatureTopLists& lists, const FeatureCandidates& candidates,
                                    const FeatureStatsRows& rows, const SparseFeatures& s, int64_t n);

#if defined(SAE_WITH_CUDA)
void feature_stats_scan_cuda(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                             const Tensor& group);
void feature_stats_scan_sparse_cuda(FeatureCandidates& out, Tensor& histogram, const SparseFeatures& s, int64_t rows,
                                    const Tensor& threshold, const Tensor& group);
void feature_stats_merge_cuda(FeatureTopLists& lists, const FeatureCandidates& candidates, const FeatureStatsRows& rows,
                              const Tensor& f);
void feature_stats_merge_sparse_cuda(FeatureTopLists& lists, const FeatureCandidates& candidates,
                                     const FeatureStatsRows& rows, const SparseFeatures& s, int64_t n);
#endif

}  // namespace sae
