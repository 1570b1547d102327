// Block- and warp-level helpers of the CUDA kernels of the step's families and of the units (.cu
// files only). No atomics: sums are added in a fixed order, so results repeat bit for bit.
// Every helper must be called by all threads of the block (blockDim.x a multiple of 32).
#pragma once
#include <cstdint>

#include "tensor/cuda/common.cuh"

namespace sae {

// The sum of `value` over the block's threads (warps in order), returned to every thread.
__device__ inline double block_sum(double value) {
  __shared__ double warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  __syncthreads();  // a previous call may still be reading warp_sums
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < warps; ++w) total += warp_sums[w];
  return total;
}

__device__ inline int64_t block_sum(int64_t value) {
  __shared__ long long warp_counts[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  long long v = value;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  __syncthreads();
  if (lane == 0) warp_counts[warp] = v;
  __syncthreads();
  long long total = 0;
  for (int w = 0; w < warps; ++w) total += warp_counts[w];
  return total;
}

// The number of threads before this one (in thread order) whose flag is set; `total` gets the
// block's count.
__device__ inline int block_flag_scan(bool flag, int& total) {
  __shared__ int warp_counts[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  __syncthreads();
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0;
  total = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) before += warp_counts[w];
    total += warp_counts[w];
  }
  return before + __popc(ballot & ((1u << lane) - 1u));
}

// One warp's histogram of 8-bit digits: each lane adds 1 to warp_hist[digit] (digit < 0: nothing).
// Lanes sharing a digit are counted by the lowest of them, so no two lanes write one bin at once.
__device__ inline void warp_count_digit(int* warp_hist, int digit) {
  const unsigned peers = __match_any_sync(0xffffffffu, digit);
  if (digit >= 0 && __ffs(peers) - 1 == int(threadIdx.x % 32)) warp_hist[digit] += __popc(peers);
  __syncwarp();
}

// One block: row_ptr[1 .. rows] = row_ptr[0] + running sums of counts (row_ptr points at row0's
// entry; set_base: row_ptr[0] = 0 first). Each thread owns a chunk; chunk totals scanned by thread 0.
static __global__ void offsets_from_counts_kernel(int32_t* row_ptr, const int32_t* counts, int64_t rows, bool set_base) {
  __shared__ int32_t chunk_base[kBlock];
  if (set_base && threadIdx.x == 0) row_ptr[0] = 0;
  __syncthreads();
  const int64_t chunk = (rows + kBlock - 1) / kBlock;
  const int64_t begin = min(rows, threadIdx.x * chunk), end = min(rows, begin + chunk);
  int32_t total = 0;
  for (int64_t r = begin; r < end; ++r) total += counts[r];
  chunk_base[threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t running = row_ptr[0];
    for (int t = 0; t < kBlock; ++t) {
      const int32_t c = chunk_base[t];
      chunk_base[t] = running;
      running += c;
    }
  }
  __syncthreads();
  int32_t running = chunk_base[threadIdx.x];
  for (int64_t r = begin; r < end; ++r) {
    running += counts[r];
    row_ptr[r + 1] = running;
  }
}

}  // namespace sae
