// SyntheticSource: the built-in activation generator (docs/contract.md §3), following the seed's
// theory of superposition and linear representations.
//   C unit "concepts" in R^D (random, nearly orthogonal), C > D. The first story_concepts of them
//   are story-level: each story picks story_active of them, and each is present on a token with
//   probability story_presence. The rest are token-level, drawn per token (Poisson(active) draws)
//   from a power law: concept k of them has weight (k + 1)^-zipf.
//   x = mean + sum magnitude * concept + noise * N(0, I), magnitudes uniform in [0.5, 1.5) * scale.
//   Story lengths are uniform in [mean_length / 4, 7 * mean_length / 4], so the mean is mean_length.
// Every token is a pure function of (seed, story, position), so any token can be produced alone:
// story batches, shuffled token batches and resumed runs all see the same data.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "sae/data/activations.h"
#include "sae/data/synthetic_math.h"
#include "tensor/tensor.h"

namespace sae {

struct SyntheticOptions {
  int64_t d = 768;
  int64_t concepts = 4096;        // C, including the story-level ones
  int64_t story_concepts = 256;   // the first ones, story-level
  int64_t stories = 200000;
  double mean_length = 218;       // tokens per story, on average
  double active = 20;             // mean number of token-level concept draws per token
  int64_t story_active = 4;       // story-level concepts per story
  double story_presence = 0.8;    // chance a story concept is on for a given token
  double zipf = 1.0;              // power-law exponent of token-level concept frequencies
  double magnitude = 1.0;         // scale of concept magnitudes
  double mean_norm = 2.0;         // norm of the shared mean vector
  double noise = 0.02;            // per-dimension noise standard deviation
  uint64_t seed = 0;
  Json to_json() const;
  void validate() const;  // UsageError for out-of-range values
};

class SyntheticSource : public ActivationSource {
 public:
  explicit SyntheticSource(const SyntheticOptions& options);
  int64_t d() const override { return opt_.d; }
  int64_t num_tokens() const override { return story_offsets_.back(); }
  int64_t num_stories() const override { return opt_.stories; }
  int64_t story_begin(int64_t story) const override { return story_offsets_[story]; }
  int64_t story_length(int64_t story) const override { return story_offsets_[story + 1] - story_offsets_[story]; }
  void read_tokens(int64_t begin, int64_t count, float* out) override;
  void read_token_list(const std::vector<int64_t>& tokens, float* out) override;
  Json describe() const override;
  std::string name() const override { return "synthetic data"; }
  // On CUDA (a GPU present, story_active <= 1024): the tokens made by a kernel, one block per token
  // (cuda_data.cu); on the CPU: the same split computed on the host, which equals read_tokens bit for
  // bit (tests/sae/data/test_device_data.cpp). The CUDA tokens differ from the CPU's only where
  // the device's double log, cos or sin differ from glibc's in a last bit that survives the cast
  // of the noise term to float32 (docs/contract.md §3).
  bool generates_on(Device device) const override;
  void generate_on(const std::vector<int64_t>& tokens, Tensor& out) override;

  const Tensor& concepts() const { return concepts_; }  // [C, D], unit rows
  const SyntheticOptions& options() const { return opt_; }

 private:
  int64_t story_of_token(int64_t token) const;
  std::vector<int64_t> story_concept_ids(int64_t story) const;  // the story-level concepts of a story
  // Writes one token; `story_concepts` = story_concept_ids(story). Pure, so tokens run in parallel.
  void generate_token(int64_t story, int64_t position, const std::vector<int64_t>& story_concepts, float* out) const;

  // The settings of one token for synthetic_math.h.
  SyntheticTokenSettings token_settings() const;
  // generate_on's host version: token `token` into out (d floats), the device's split on the host.
  void generate_token_split(int64_t token, float* out) const;

  SyntheticOptions opt_;
  std::vector<int64_t> story_offsets_;  // [stories + 1]
  // generate_on(Device::CUDA)'s tables and token list, made on first use (cuda_data.h).
  struct DeviceTables;
  std::shared_ptr<DeviceTables> device_;
  Tensor concepts_;                     // [C, D]
  std::vector<float> mean_;             // [D]
  std::vector<double> token_cdf_;       // cumulative weights of the token-level concepts
};

}  // namespace sae
