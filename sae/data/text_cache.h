// sae_cache's work: a language model's activations at one hook point, computed from a text corpus
// once and written as an activation cache (activation_cache.h) to train on many times. Each story
// is tokenized, cut into windows (lm/text_windows.h), run through the model to the hook point and
// added as a story of the cache; the BOS row is left out unless kept. Killed at any moment, it
// continues where the cache's manifest says when run again with the same options; shards already
// written are checked first, and any found deleted, truncated or altered are written again from the
// text (a complete cache too). The manifest's source records the model, the text and both their
// fingerprints, so a cache made again under the same name from other weights or text is another
// source (refused on a retry, and on a --resume of a run from it).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "lm/hook_points.h"
#include "lm/text_windows.h"
#include "sae/data/activation_cache.h"
#include "tensor/tensor.h"

namespace sae {

struct TextCacheOptions {
  std::string model_dir, text, out;
  HookChoice choice;                 // not given: hidden_states[2]
  std::string dtype = "F32";         // F32, F16 or BF16
  int64_t shard_tokens = 262144;     // tokens per shard (each ends at a story's end)
  int64_t max_stories = 0;           // 0: the whole corpus
  int64_t context_size = 0;          // 0: the model's positions (long stories: split_long_stories)
  bool split_long_stories = false;   // a story longer than the model's positions: cut (else an error)
  std::string text_field = "text";   // JSON lines: the field with the text
  BosMode bos = BosMode::Auto;
  bool keep_bos = false;             // cache the activations at BOS positions too
  Device device = Device::CPU;
};

// What the work reports as it goes (each may be left empty).
struct TextCacheEvents {
  std::function<void(const std::string& line)> note;  // a shard written again, a cache continued
  // Reading the corpus begins at byte `offset` of its `bytes`; then after each story, where it is.
  std::function<void(int64_t bytes, int64_t offset)> begin;
  std::function<void(int64_t offset, int64_t tokens, int64_t stories)> story_done;
};

struct TextCacheResult {
  CacheManifest manifest;
  bool complete_already = false;  // nothing was left to write
  int64_t stories_read = 0;       // corpus stories read in all (the cache's stories are windows)
  int64_t d = 0;
  std::string hook_name;
};

// UsageError for options that cannot work together (a context above the model's positions,
// keep_bos without a BOS), DataError for the corpus, the model and the cache.
TextCacheResult write_text_cache(const TextCacheOptions& options, const TextCacheEvents& events = {});

}  // namespace sae
