// The CUDA kernels of sae/data (cuda_data.cu), called by batches.cpp and synthetic.cpp in CUDA
// builds only (SAE_WITH_CUDA): the batch normalisation on the device and the synthetic generator.
#pragma once
#include <cstdint>

#include "sae/data/synthetic_math.h"

namespace sae {

// normalize_batch_on_device (batches.h) on CUDA: rows (count floats of width d, device) normalised
// in place; stats (device, 2 float64) = raw mean, raw std (unbiased), sums in float64 in a fixed
// order. mode 0: story, x = (x - mean) * sqrt(d) / std (shift and scale cast to float, as on the
// host); 1: x * scale; 2: x unchanged. Queued on the compute stream; nothing is read back.
void normalize_rows_cuda(float* rows, int64_t count, int64_t d, int mode, double scale, double* stats);

// The synthetic generator's device tables (copied once): concepts [C, D], mean [D], the token-level
// concepts' cdf [C - story_concepts] and the story offsets [stories + 1].
struct SyntheticDeviceTables {
  const float* concepts = nullptr;
  const float* mean = nullptr;
  const double* token_cdf = nullptr;
  const int64_t* story_offsets = nullptr;
  int64_t stories = 0;
};
// Largest story_active the device generator takes (each block keeps a story's concept ids).
constexpr int64_t kSyntheticDeviceMaxStoryActive = 1024;

// Tokens into out [rows, D] (device): token r is tokens[r] (device, int64) or, when tokens is null,
// first_token + r of story `story`. The same values as SyntheticSource::read_tokens up to the
// device's double log / cos / sin (docs/contract.md §3).
void synthetic_tokens_cuda(float* out, int64_t rows, const int64_t* tokens, int64_t story, int64_t first_token,
                           const SyntheticTokenSettings& settings, const SyntheticDeviceTables& tables);

}  // namespace sae
