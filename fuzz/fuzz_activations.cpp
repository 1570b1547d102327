// Fuzzes activation files as training reads them (sae/data): the input is written as
// input.npy when it starts with the .npy magic, else input.safetensors, opened with
// open_activations (shape, dtype, story_lengths, token_ids, the NaN check), and a few batches are
// drawn through Batcher in story mode (per-story normalisation) and token mode (dataset scale),
// including a save/restore of the token batcher's position, which must continue identically.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_util.h"
#include "sae/data/activations.h"
#include "sae/data/batches.h"
#include "sae/data/synthetic.h"

using namespace sae;

namespace {

struct Buffers {
  std::vector<float> raw, normalized;
  explicit Buffers(const Batcher& b, int64_t d)
      : raw(static_cast<size_t>(b.max_batch_tokens() * d)), normalized(static_cast<size_t>(b.max_batch_tokens() * d)) {}
};

void check_stories(ActivationSource& source) {
  int64_t next = 0;
  for (int64_t s = 0; s < source.num_stories(); ++s) {
    fuzz::require(source.story_begin(s) == next, "stories are not consecutive");
    fuzz::require(source.story_length(s) >= 1, "a story with no tokens was accepted");
    next += source.story_length(s);
  }
  fuzz::require(source.num_stories() == 0 || next == source.num_tokens(), "story lengths do not sum to the token count");
}

void story_batches(ActivationSource& source) {
  if (source.num_stories() == 0) return;
  fuzz::attempt([&] {
    Batcher batcher(source, 0, Normalization::Story, 1.0, 0);
    Buffers b(batcher, source.d());
    std::vector<float> expected;
    for (int64_t k = 0; k < 3; ++k) {
      const int64_t story = k % source.num_stories();
      BatchStats stats;
      const int64_t n = batcher.next(b.raw.data(), b.normalized.data(), stats);
      fuzz::require(n == source.story_length(story), "a story batch has the wrong length");
      expected.resize(static_cast<size_t>(n * source.d()));
      source.read_tokens(source.story_begin(story), n, expected.data());
      fuzz::require(std::memcmp(expected.data(), b.raw.data(), expected.size() * sizeof(float)) == 0,
                    "a story batch holds other tokens than its story");
    }
  });
}

void token_batches(ActivationSource& source) {
  const int64_t batch = std::min<int64_t>(source.num_tokens(), 5);
  fuzz::attempt([&] {
    const double scale = estimate_dataset_scale(source, 64);
    fuzz::require(std::isfinite(scale) && scale > 0, "the dataset scale is not a positive number");
    Batcher batcher(source, batch, Normalization::Dataset, scale, 7);
    Buffers b(batcher, source.d());
    BatchStats stats;
    batcher.next(b.raw.data(), b.normalized.data(), stats);
    const Json position = batcher.state();
    batcher.next(b.raw.data(), b.normalized.data(), stats);
    const std::vector<float> continued = b.raw;

    Batcher resumed(source, batch, Normalization::Dataset, scale, 7);
    resumed.restore(position);
    resumed.next(b.raw.data(), b.normalized.data(), stats);
    fuzz::require(std::memcmp(continued.data(), b.raw.data(), continued.size() * sizeof(float)) == 0,
                  "a restored batcher does not continue with the same batch");
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const bool npy = size >= 6 && std::memcmp(data, "\x93NUMPY", 6) == 0;
  const std::string path = fuzz::write_scratch_file(npy ? "input.npy" : "input.safetensors",
                                                    std::string_view(reinterpret_cast<const char*>(data), size));
  std::unique_ptr<ActivationSource> source;
  if (!fuzz::attempt([&] { source = open_activations(path, SyntheticOptions{}); })) return 0;
  fuzz::require(source->d() >= 1 && source->num_tokens() >= 1, "empty activations were accepted");
  check_stories(*source);
  fuzz::attempt([&] { (void)source->describe().dump(); });
  story_batches(*source);
  token_batches(*source);
  return 0;
}
