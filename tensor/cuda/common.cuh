// Shared by the CUDA kernel files (tensor/cuda/kernels.cu, sae/step/cuda_kernels.cu; .cu files
// only): block size, grid sizing for grid-stride loops, thread indices, scratch device buffers from
// the caching allocator.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>

#include <cuda_bf16.h>

#include "tensor/cuda/backend.h"
#include "tensor/cuda/check.h"
#include "tensor/tensor.h"

namespace sae {

constexpr int kBlock = 256;  // threads per block of the 1-D kernels

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over `work` items of `per_block` each: enough to fill every SM
// several times over, no more (the loop covers the rest).
inline int grid_for(int64_t work, int64_t per_block = kBlock) {
  const int64_t max_blocks = static_cast<int64_t>(cuda_sm_count()) * 16;
  return static_cast<int>(std::max<int64_t>(1, std::min(ceil_div(work, per_block), max_blocks)));
}

// First index and stride of this thread in a 1-D grid-stride loop.
__device__ inline int64_t thread_index() { return blockIdx.x * int64_t(blockDim.x) + threadIdx.x; }
__device__ inline int64_t grid_stride() { return int64_t(blockDim.x) * gridDim.x; }

// Scratch device memory from the caching allocator, given back when it goes out of scope. Giving
// it back before the kernels that use it have run is safe: every user is on the one stream.
struct DeviceBuffer {
  void* ptr;
  explicit DeviceBuffer(size_t bytes) : ptr(cuda_alloc(bytes)) { HostWorkCounter::note_allocation(); }
  ~DeviceBuffer() { cuda_free(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// A GEMM operand as bfloat16, for the bf16 GEMMs of --precision bf16 (tensor/precision.h): a bf16
// tensor as stored, a float32 one rounded (nearest even) into scratch device memory that is given
// back when this goes out of scope.
class Bf16Operand {
 public:
  explicit Bf16Operand(const Tensor& t);
  __nv_bfloat16* data() { return data_; }

 private:
  std::unique_ptr<DeviceBuffer> copy_;  // the rounded copy of a float32 operand
  __nv_bfloat16* data_ = nullptr;
};

}  // namespace sae
