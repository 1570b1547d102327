// The kernels of sae_kernels.h's "other architectures" entries, declared for the two tables that
// list them: cpu_kernels.cpp (the _cpu functions, defined in cpu_arch_kernels.cpp) and
// cuda_kernels.cu (the _cuda functions, defined in cuda_arch_kernels.cu). A signature that drifts
// from the op list stops the compile where the table is built. Everything else calls the
// front-end (sae_ops.h).
#pragma once
#include "sae/step/sae_kernels.h"

namespace sae {

void topk_select_cpu(SparseFeatures& s, const Tensor& pre, const Tensor& bias, const Tensor& allowed, int64_t k,
                      int64_t row0);
void batchtopk_select_cpu(SparseFeatures& s, const Tensor& pre, const Tensor& bias, int64_t total);
void sparse_by_feature_cpu(SparseFeatures& s, Tensor& col_sum, Tensor& col_count);
void decoder_project_cpu(Tensor& grad, const Tensor& W, const Tensor& norms);
void decoder_normalize_cpu(Tensor& W);
void jumprelu_forward_cpu(Tensor& f, Tensor& pre, const Tensor& bias, const Tensor& log_threshold, const Tensor& norms,
                           const JumpReluConstants& c, Tensor& col_count, Tensor& col_a, Tensor& col_b);
void jumprelu_backward_cpu(Tensor& grad, const Tensor& pre, const Tensor& log_threshold, const Tensor& norms,
                            const JumpReluConstants& c, Tensor& grad_bias, Tensor& grad_log_threshold,
                            Tensor& decoder_scale);
void gated_forward_cpu(Tensor& f, Tensor& gate, const Tensor& pre, const Tensor& b_gate, const Tensor& b_mag,
                        const Tensor& r_mag, Tensor& col_count, Tensor& col_gate);
void gated_backward_cpu(Tensor& grad, const Tensor& grad_gate, const Tensor& pre, const Tensor& b_gate,
                         const Tensor& b_mag, const Tensor& r_mag, const Tensor& norms, double lambda,
                         Tensor& grad_b_gate, Tensor& grad_b_mag, Tensor& grad_r_mag);

#if defined(SAE_WITH_CUDA)
void topk_select_cuda(SparseFeatures& s, const Tensor& pre, const Tensor& bias, const Tensor& allowed, int64_t k,
                      int64_t row0);
void batchtopk_select_cuda(SparseFeatures& s, const Tensor& pre, const Tensor& bias, int64_t total);
void sparse_by_feature_cuda(SparseFeatures& s, Tensor& col_sum, Tensor& col_count);
void decoder_project_cuda(Tensor& grad, const Tensor& W, const Tensor& norms);
void decoder_normalize_cuda(Tensor& W);
void jumprelu_forward_cuda(Tensor& f, Tensor& pre, const Tensor& bias, const Tensor& log_threshold, const Tensor& norms,
                           const JumpReluConstants& c, Tensor& col_count, Tensor& col_a, Tensor& col_b);
void jumprelu_backward_cuda(Tensor& grad, const Tensor& pre, const Tensor& log_threshold, const Tensor& norms,
                            const JumpReluConstants& c, Tensor& grad_bias, Tensor& grad_log_threshold,
                            Tensor& decoder_scale);
void gated_forward_cuda(Tensor& f, Tensor& gate, const Tensor& pre, const Tensor& b_gate, const Tensor& b_mag,
                        const Tensor& r_mag, Tensor& col_count, Tensor& col_gate);
void gated_backward_cuda(Tensor& grad, const Tensor& grad_gate, const Tensor& pre, const Tensor& b_gate,
                         const Tensor& b_mag, const Tensor& r_mag, const Tensor& norms, double lambda,
                         Tensor& grad_b_gate, Tensor& grad_b_mag, Tensor& grad_r_mag);
#endif

}  // namespace sae
