// The kernels of sae_kernels.h's "feature statistics" entries, declared for the two tables that list
// them: cpu_kernels.cpp (the _cpu functions, defined in cpu_stats_kernels.cpp) and cuda_kernels.cu
// (the _cuda functions, defined in cuda_stats_kernels.cu). Everything else calls the front-end
// (sae_ops.h).
#pragma once
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

void feature_stats_scan_cpu(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                            const Tensor& group);
void feature_stats_scan_sparse_cpu(FeatureCandidates& out, Tensor& histogram, const SparseFeatures& s, int64_t rows,
                                   const Tensor& threshold, const Tensor& group);
void feature_values_at_cpu(Tensor& out, const Tensor& f, const Tensor& rows, const Tensor& features);
void feature_values_at_sparse_cpu(Tensor& out, const SparseFeatures& s, int64_t rows_limit, const Tensor& rows,
                                  const Tensor& features);

#if defined(SAE_WITH_CUDA)
void feature_stats_scan_cuda(FeatureCandidates& out, Tensor& histogram, const Tensor& f, const Tensor& threshold,
                             const Tensor& group);
void feature_stats_scan_sparse_cuda(FeatureCandidates& out, Tensor& histogram, const SparseFeatures& s, int64_t rows,
                                    const Tensor& threshold, const Tensor& group);
void feature_values_at_cuda(Tensor& out, const Tensor& f, const Tensor& rows, const Tensor& features);
void feature_values_at_sparse_cuda(Tensor& out, const SparseFeatures& s, int64_t rows_limit, const Tensor& rows,
                                   const Tensor& features);
#endif

}  // namespace sae
