// ActivationSource: where training activations come from. A source is a sequence of tokens, each
// a D-wide float32 vector, optionally grouped into stories (contiguous runs of tokens). Files
// (safetensors / .npy, memory-mapped) and the built-in synthetic generator implement it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/json.h"
#include "tensor/tensor.h"

namespace sae {

class ActivationSource {
 public:
  virtual ~ActivationSource() = default;
  virtual int64_t d() const = 0;
  // The row's column blocks, each normalised on its own (sae/data/batches.h): one of width d, or a
  // ConcatSource's sources.
  virtual std::vector<int64_t> block_widths() const { return {d()}; }
  virtual int64_t num_tokens() const = 0;
  // Story boundaries: story s covers tokens [story_begin(s), story_begin(s) + story_length(s)).
  // A source without boundaries reports no stories.
  virtual int64_t num_stories() const = 0;
  virtual int64_t story_begin(int64_t story) const = 0;
  virtual int64_t story_length(int64_t story) const = 0;
  // Copies tokens [begin, begin + count) into out (count * d floats, row-major).
  virtual void read_tokens(int64_t begin, int64_t count, float* out) = 0;
  // Copies arbitrary tokens (e.g. a shuffled batch) into out, in the order given.
  virtual void read_token_list(const std::vector<int64_t>& tokens, float* out);
  // Provenance for config.json and checkpoints: kind, path or generator parameters.
  virtual Json describe() const = 0;
  // What error messages call the source: the file's path, or "synthetic data".
  virtual std::string name() const = 0;
  // A hint that reads will jump around (shuffled token batches, sampling) or not: a memory-mapped
  // file stops reading ahead around every row it touches while random is set.
  virtual void expect_random_access(bool random) {}
  int64_t longest_story() const;
  // Sources that can make tokens on a device (the synthetic generator: on CUDA, and on the CPU the
  // same computation split the way the GPU splits it): the tokens read_token_list would give, into
  // out (float32 [tokens, D] on that device). Where the numbers differ: docs/contract.md §3.
  virtual bool generates_on(Device device) const { return false; }
  virtual void generate_on(const std::vector<int64_t>& tokens, Tensor& out);
  // Token ids, for showing what a feature fires on (feature statistics): activation files and caches
  // that store token_ids have them; -1 for a token without one.
  virtual bool has_token_ids() const { return false; }
  virtual int32_t token_id(int64_t token) const { return -1; }
  // The story holding `token` (binary search over story_begin), or -1 for a source without stories.
  int64_t story_containing(int64_t token) const;
  // Where `token` is, for messages: "token T" (a cache adds its shard file and the token there).
  virtual std::string locate(int64_t token) const;
};

// The first and last 4096 tokens finite (the cheap check a file or cache gets on open; every batch is
// checked when it is read): DataError naming the place of the first non-finite value.
void check_ends_are_finite(ActivationSource& source);

// Opens --data: "synthetic" (with the generator options in `synthetic`), a .safetensors / .npy
// path, or an activation cache folder (activation_cache.h). Throws DataError for unreadable or malformed files, NaN/Inf included (checked on open).
struct SyntheticOptions;
std::unique_ptr<ActivationSource> open_activations(const std::string& data, const SyntheticOptions& synthetic);

// A comma in a data option separates a crosscoder's sources. UsageError naming `option` when the
// whole text is itself a file or folder (a cache written under a name with a comma cannot be read
// as one): it says to give it a name without a comma.
void refuse_path_with_comma(const std::string& option, const std::string& text);

}  // namespace sae
