// The synthetic generator's arithmetic (synthetic.h), written once for the host and the device:
// the seed mixing, the random stream (xoshiro256** seeded by splitmix64: tensor/rng.h's Rng, draw
// for draw), and one token's draws in the order generate_token consumes them: first the noise, a
// pair (u1, u2) per two columns, then its concepts one at a time (the story-level ones present on
// this token, then Poisson(active) token-level ones from the power law), each with its magnitude.
// A token is then x[j] = mean[j] + noise_j, plus magnitude * concept[j] for each concept in turn.
// The CUDA generator (cuda_data.cu) splits this over threads: one thread draws, all apply;
// tests/sae/data/test_device_data.cpp runs the same split on the host against the generator.
#pragma once
#include <cmath>
#include <cstdint>

#include "tensor/host_device.h"

namespace sae {

// Independent seeds for (seed, a, b) triples: splitmix-style mixing.
SAE_HOST_DEVICE inline uint64_t synthetic_mix(uint64_t seed, uint64_t a, uint64_t b = 0) {
  uint64_t z = seed ^ (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full) ^ 0x5851F42D4C957F2Dull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr uint64_t kSyntheticStreamConcepts = 1, kSyntheticStreamLengths = 2, kSyntheticStreamStory = 3,
                   kSyntheticStreamToken = 4;

// xoshiro256** seeded by splitmix64: the sequence of tensor/rng.h's Rng(seed).
struct SyntheticRng {
  uint64_t s[4];
  SAE_HOST_DEVICE explicit SyntheticRng(uint64_t seed = 0) {
    for (uint64_t& word : s) {
      uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      word = z ^ (z >> 31);
    }
  }
  SAE_HOST_DEVICE static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  SAE_HOST_DEVICE uint64_t next_u64() {
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }
  SAE_HOST_DEVICE double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  SAE_HOST_DEVICE double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
};

// The story-level concepts of `story` (SyntheticSource::story_concept_ids): story_active distinct
// ids below story_concepts, each drawn with Rng::below's rejection of the uneven tail.
SAE_HOST_DEVICE inline void synthetic_story_concept_ids(uint64_t seed, int64_t story, int64_t story_concepts,
                                                        int64_t story_active, int64_t* ids) {
  SyntheticRng rng(synthetic_mix(seed, kSyntheticStreamStory, static_cast<uint64_t>(story)));
  const uint64_t n = static_cast<uint64_t>(story_concepts), all = ~uint64_t(0);
  const uint64_t limit = all - all % n;
  int64_t count = 0;
  while (count < story_active) {
    uint64_t r = rng.next_u64();
    while (r >= limit) r = rng.next_u64();
    const int64_t k = static_cast<int64_t>(r % n);
    bool seen = false;
    for (int64_t i = 0; i < count; ++i) seen = seen || ids[i] == k;
    if (!seen) ids[count++] = k;
  }
}

// The generator's settings one token needs (SyntheticOptions, resolved).
struct SyntheticTokenSettings {
  uint64_t seed = 0;
  int64_t d = 0;
  int64_t story_concepts = 0;   // the first story_concepts concepts are story-level
  int64_t story_active = 0;     // story-level concepts per story (ids given per token)
  int64_t token_concepts = 0;   // concepts - story_concepts (the cdf's length)
  double noise = 0, story_presence = 0, magnitude = 1;
  double poisson_limit = 1;     // exp(-active), as generate_token's poisson() computes it
};

// The noise of columns (j, j + 1): the pair of uniforms a Box-Muller draw uses.
SAE_HOST_DEVICE inline void synthetic_noise_draw(SyntheticRng& rng, double& u1, double& u2) {
  u1 = rng.uniform();
  while (u1 <= 0.0) u1 = rng.uniform();
  u2 = rng.uniform();
}
// The two noise values of a pair (the noise term of columns j and j + 1, before the float cast).
SAE_HOST_DEVICE inline void synthetic_noise_values(double noise, double u1, double u2, double& first, double& second) {
  const double radius = noise * math_sqrt(-2.0 * math_log(u1)), angle = 2.0 * M_PI * u2;
#if defined(__CUDA_ARCH__)
  first = radius * ::cos(angle);
  second = radius * ::sin(angle);
#else
  first = radius * std::cos(angle);
  second = radius * std::sin(angle);
#endif
}

// A token's concepts, one at a time, after its noise draws (the same rng, continued).
struct SyntheticConceptDraws {
  int phase = 0;        // 0: story-level, 1: token-level, 2: done
  int64_t next_story = 0, draws_left = -1;

  // The next concept added to the token and its magnitude; false when there is none left.
  SAE_HOST_DEVICE bool next(SyntheticRng& rng, const SyntheticTokenSettings& t, const int64_t* story_ids,
                            const double* token_cdf, int64_t& concept_index, float& magnitude) {
    while (phase == 0) {
      if (next_story >= t.story_active) {
        phase = 1;
        break;
      }
      const int64_t k = story_ids[next_story++];
      if (rng.uniform() < t.story_presence) {
        concept_index = k;
        magnitude = static_cast<float>(t.magnitude * rng.uniform(0.5, 1.5));
        return true;
      }
    }
    if (phase == 1) {
      if (draws_left < 0) {  // Poisson(active) by Knuth's method; no draw at all without token concepts
        draws_left = 0;
        if (t.token_concepts > 0) {
          double p = rng.uniform();
          while (p > t.poisson_limit) {
            ++draws_left;
            p *= rng.uniform();
          }
        }
      }
      if (draws_left > 0) {
        --draws_left;
        const double u = rng.uniform();
        int64_t lo = 0, hi = t.token_concepts;  // lower_bound: the first cdf value >= u
        while (lo < hi) {
          const int64_t mid = lo + (hi - lo) / 2;
          if (token_cdf[mid] < u) lo = mid + 1; else hi = mid;
        }
        concept_index = t.story_concepts + (lo < t.token_concepts - 1 ? lo : t.token_concepts - 1);
        magnitude = static_cast<float>(t.magnitude * rng.uniform(0.5, 1.5));
        return true;
      }
      phase = 2;
    }
    return false;
  }
};

}  // namespace sae
