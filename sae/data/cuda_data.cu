// The CUDA kernels of sae/data (see cuda_data.h): the batch normalisation and the synthetic
// generator on the device. Everything is queued on the backend's compute stream; nothing is read
// back here.
//   normalize_rows       the batch summed in float64, twice (the mean, then the squared deviations):
//                        blocks of per-thread partial sums in a fixed order and a fixed tree, then one
//                        block over the blocks' sums; a grid-stride kernel applies (x - shift) * scale
//                        with the host's float casts.
//   synthetic_tokens     one block per token: thread 0 draws (synthetic_math.h: the noise's
//                        uniforms, then the concepts and magnitudes, in generate_token's order), in
//                        chunks into shared memory; after each chunk every thread applies it to its
//                        columns, so each column sums in the CPU generator's order.
#include <algorithm>
#include <cmath>

#include "sae/data/cuda_data.h"
#include "tensor/cuda/common.cuh"

namespace sae {

namespace {

constexpr int kSumThreads = 1024;

// Block-wide sum of one double per thread (blockDim.x == kSumThreads), a fixed tree.
__device__ double block_total(double value) {
  __shared__ double part[kSumThreads];
  part[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kSumThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = part[0];
  __syncthreads();
  return total;
}

// The moments in two passes over x[0 .. count), each a grid of blocks writing one partial sum
// apiece (grid-stride, so each thread's terms come in a fixed order) and one block adding the
// partials in a fixed tree: pass 0 sums x and writes stats[0] = the mean; pass 1 sums (x - mean)^2
// and writes stats[1] = the unbiased std.
__global__ void moments_partial_kernel(double* partial, const float* x, int64_t count, const double* stats, int pass) {
  const double mean = pass == 1 ? stats[0] : 0.0;
  double sum = 0;
  for (int64_t i = blockIdx.x * int64_t(kSumThreads) + threadIdx.x; i < count; i += int64_t(gridDim.x) * kSumThreads)
    sum += pass == 0 ? double(x[i]) : (x[i] - mean) * (x[i] - mean);
  const double total = block_total(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void moments_final_kernel(double* stats, const double* partial, int blocks, int64_t count, int pass) {
  double sum = 0;
  for (int b = threadIdx.x; b < blocks; b += kSumThreads) sum += partial[b];
  const double total = block_total(sum);
  if (threadIdx.x == 0) {
    if (pass == 0)
      stats[0] = total / double(count);
    else
      stats[1] = count > 1 ? sqrt(total / double(count - 1)) : 0.0;
  }
}

// mode 0: shift and scale from the statistics, as normalize_batch computes them; 1: x * scale.
__global__ void normalize_kernel(float* x, int64_t count, int64_t d, int mode, double scale, const double* stats) {
  float shift_f = 0.0f, scale_f = static_cast<float>(scale);
  if (mode == 0) {
    shift_f = static_cast<float>(stats[0]);
    scale_f = static_cast<float>(sqrt(double(d)) / stats[1]);
  }
  for (int64_t i = thread_index(); i < count; i += grid_stride()) x[i] = (x[i] - shift_f) * scale_f;
}

constexpr int kGenThreads = 256, kChunk = 256;

__global__ void synthetic_tokens_kernel(float* out, int64_t rows, const int64_t* tokens, int64_t story,
                                        int64_t first_token, SyntheticTokenSettings t, SyntheticDeviceTables tables) {
  __shared__ double u1s[kChunk], u2s[kChunk];
  __shared__ int64_t concept_ids[kChunk];
  __shared__ float magnitudes[kChunk];
  __shared__ int chunk_count;
  __shared__ bool chunk_last;
  extern __shared__ int64_t story_ids[];  // t.story_active
  const int64_t d = t.d;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    float* o = out + row * d;
    SyntheticRng rng(0);
    SyntheticConceptDraws draws;
    if (threadIdx.x == 0) {
      const int64_t token = tokens ? tokens[row] : first_token + row;
      int64_t s = story;
      if (tokens) {  // the story holding the token: the last offset <= token
        int64_t lo = 0, hi = tables.stories;
        while (hi - lo > 1) {
          const int64_t mid = lo + (hi - lo) / 2;
          if (tables.story_offsets[mid] <= token) lo = mid; else hi = mid;
        }
        s = lo;
      }
      if (t.story_active > 0) synthetic_story_concept_ids(t.seed, s, t.story_concepts, t.story_active, story_ids);
      rng = SyntheticRng(synthetic_mix(t.seed, kSyntheticStreamToken, static_cast<uint64_t>(token)));
    }
    // The noise, kChunk pairs of columns at a time.
    for (int64_t j0 = 0; j0 < d; j0 += 2 * kChunk) {
      const int64_t pairs = (d - j0 + 1) / 2 < kChunk ? (d - j0 + 1) / 2 : kChunk;
      if (threadIdx.x == 0)
        for (int64_t q = 0; q < pairs; ++q) synthetic_noise_draw(rng, u1s[q], u2s[q]);
      __syncthreads();
      for (int64_t q = threadIdx.x; q < pairs; q += blockDim.x) {
        const int64_t j = j0 + 2 * q;
        double first, second;
        synthetic_noise_values(t.noise, u1s[q], u2s[q], first, second);
        o[j] = tables.mean[j] + static_cast<float>(first);
        if (j + 1 < d) o[j + 1] = tables.mean[j + 1] + static_cast<float>(second);
      }
      __syncthreads();
    }
    // The concepts, kChunk at a time, each column adding them in draw order.
    while (true) {
      if (threadIdx.x == 0) {
        int count = 0;
        while (count < kChunk &&
               draws.next(rng, t, story_ids, tables.token_cdf, concept_ids[count], magnitudes[count]))
          ++count;
        chunk_count = count;
        chunk_last = count < kChunk;
      }
      __syncthreads();
      const int count = chunk_count;
      const bool last = chunk_last;
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        float v = o[j];
        for (int q = 0; q < count; ++q) v += magnitudes[q] * tables.concepts[concept_ids[q] * d + j];
        o[j] = v;
      }
      __syncthreads();  // the chunk is read by all before thread 0 refills it
      if (last) break;
    }
  }
}

}  // namespace

void normalize_rows_cuda(float* rows, int64_t count, int64_t d, int mode, double scale, double* stats) {
  if (count <= 0) return;
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(count, kSumThreads),
                                                                              int64_t(cuda_sm_count()) * 2)));
  DeviceBuffer partial(static_cast<size_t>(blocks) * sizeof(double));
  double* part = static_cast<double*>(partial.ptr);
  for (int pass = 0; pass < 2; ++pass) {
    moments_partial_kernel<<<blocks, kSumThreads, 0, cuda_stream()>>>(part, rows, count, stats, pass);
    SAE_CUDA_CHECK_LAUNCH();
    moments_final_kernel<<<1, kSumThreads, 0, cuda_stream()>>>(stats, part, blocks, count, pass);
    SAE_CUDA_CHECK_LAUNCH();
  }
  if (mode == 2) return;
  normalize_kernel<<<grid_for(count), kBlock, 0, cuda_stream()>>>(rows, count, d, mode, scale, stats);
  SAE_CUDA_CHECK_LAUNCH();
}

void synthetic_tokens_cuda(float* out, int64_t rows, const int64_t* tokens, int64_t story, int64_t first_token,
                           const SyntheticTokenSettings& settings, const SyntheticDeviceTables& tables) {
  if (rows <= 0 || settings.d <= 0) return;
  const size_t shared = static_cast<size_t>(std::max<int64_t>(settings.story_active, 1)) * sizeof(int64_t);
  const int blocks = static_cast<int>(std::min<int64_t>(rows, int64_t(cuda_sm_count()) * 8));
  synthetic_tokens_kernel<<<blocks, kGenThreads, shared, cuda_stream()>>>(out, rows, tokens, story, first_token,
                                                                          settings, tables);
  SAE_CUDA_CHECK_LAUNCH();
}

}  // namespace sae
