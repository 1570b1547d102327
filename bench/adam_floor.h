// The floor of one Adam update in the step benchmarks: a single streaming pass that reads the
// gradient and reads and writes the parameters and both moments (the bytes Adam must move), with
// none of its arithmetic. Used by bench_sae_step.cpp and bench_topk.cpp.
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace sae {

inline void adam_memory_floor(Tensor& p, Tensor& m, Tensor& v, const Tensor& g) {
  float *pp = p.data<float>(), *mp = m.data<float>(), *vp = v.data<float>();
  const float* gp = g.data<float>();
  const int64_t params = p.numel();
#pragma omp parallel for simd
  for (int64_t i = 0; i < params; ++i) {
    const float gi = gp[i];
    mp[i] += gi;
    vp[i] += gi;
    pp[i] -= gi;
  }
}

}  // namespace sae
