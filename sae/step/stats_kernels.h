// The kernels of sae_kernels.h's "feature statistics" entries, declared for the two tables that list
// them: cpu_kernels.cpp (the _cpu functions, defined in cpu_stats_kernels.cpp) and cuda_kernels.cu
// (the _cuda functions, defined in cuda_stats_kernels.cu). Everything else calls the front-end
// (sae_ops.h).
#pragma once
#include "sae/step/sae_kernels.h"

namespace sae {

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
