// Activation caches: a language model's activations at one layer, computed once from a text corpus
// (experiments/sae_cache) and trained on many times (`--data CACHE/`), for data too big for one
// pass of the model per run. A cache is a folder:
//   CACHE/manifest.json          format, version, d, dtype, the model/layer/text it came from, the
//                                shards in order (file, tokens, stories, first story index, where
//                                the text continues after it), where the text continues (a
//                                TextPosition), tokens and stories in all, and "complete"
//   CACHE/shard_00000.safetensors ...  each an activation file (docs/contract.md §4): activations
//                                [n, d] (F32, F16 or BF16), story_lengths [k] I64, token_ids [n] I32,
//                                story_index [k] I64 (each story's index in the corpus)
// The writer adds whole stories, writes a shard (atomically) whenever it holds shard_tokens tokens,
// and rewrites the manifest (atomically) after each shard, so a cache killed at any moment keeps
// every shard its manifest lists and continues from the text position recorded with them. A
// continued cache (complete or not) first checks every shard its manifest lists (the file opens,
// its header agrees with the manifest: dtypes, shapes, story lengths, source): a shard deleted,
// truncated or replaced since is rewritten from the text, starting where the shard before it ended.
// CacheSource reads all shards as one ActivationSource, memory-mapped, never loaded whole.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "io/json.h"
#include "io/safetensors.h"
#include "sae/data/activations.h"

namespace sae {

struct CacheShard {
  std::string file;  // name within the cache folder
  int64_t tokens = 0, stories = 0, first_story = 0;
  Json text_after;   // where the text continues after it (null in caches written before it was kept)
};

struct CacheManifest {
  int64_t d = 0;
  std::string dtype = "F32";  // of the activations: F32, F16 or BF16
  Json source;                // where the activations came from (model, layer, text, tokenizer)
  std::vector<CacheShard> shards;
  Json text_position;         // where the corpus continues after the last shard (the writer's caller fills it)
  int64_t tokens = 0, stories = 0;
  bool complete = false;

  Json to_json() const;
  static CacheManifest from_json(const Json& j, const std::string& path);  // DataError naming path
};

// What is wrong with a shard listed in `manifest` (file missing, truncated, not safetensors, or a
// header that disagrees with the manifest); "" when nothing is.
std::string cache_shard_problem(const std::string& dir, const CacheManifest& manifest, const CacheShard& shard);

// True when `path` is a folder holding a manifest.json.
bool is_activation_cache(const std::string& path);
CacheManifest read_cache_manifest(const std::string& dir);

class ActivationCacheWriter {
 public:
  // A new cache in `dir` (created; an existing cache there is continued, see resume_position),
  // writing `dtype` shards of about shard_tokens tokens.
  ActivationCacheWriter(const std::string& dir, int64_t d, const std::string& dtype, int64_t shard_tokens,
                        const Json& source);
  // The manifest so far (on a continued cache: its shards; shard files it does not list, left by
  // a kill during a write, are deleted).
  const CacheManifest& manifest() const { return manifest_; }
  // Listed shards that failed the check (index into manifest().shards, with the reason), in order.
  // Each is rewritten by: reading the text from shard_start(index) and adding its stories again
  // after begin_rewrite(index) until rewriting() is false.
  const std::vector<std::pair<size_t, std::string>>& damaged_shards() const { return damaged_; }
  // Where the text of shard `index` begins (a TextPosition as JSON). DataError when the cache does
  // not record it (written by an older sae_cache: delete the cache and write it again).
  Json shard_start(size_t index) const;
  void begin_rewrite(size_t index);
  bool rewriting() const { return rewriting_ >= 0; }
  // One story (or one piece of a story cut into pieces): its index in the corpus, its token ids and
  // activations [T, d] (float32, host). When the pending tokens reach shard_tokens and
  // may_end_shard (false for every piece of a cut story but its last), writes a shard;
  // `position_after` is where the corpus continues after it, recorded with that shard.
  void add_story(int64_t story_index, const std::vector<int32_t>& token_ids, const float* activations,
                 const Json& position_after, bool may_end_shard = true);
  // Writes what is pending and marks the cache complete.
  void finish();

 private:
  void write_shard();
  void finish_rewrite();

  std::string dir_;
  std::vector<std::pair<size_t, std::string>> damaged_;
  int64_t rewriting_ = -1;  // the shard being rewritten
  int64_t shard_tokens_;
  CacheManifest manifest_;
  std::string pending_activations_;  // in dtype
  std::vector<int32_t> pending_ids_;
  std::vector<int64_t> pending_lengths_, pending_story_index_;
  Json pending_position_;
};

// All shards of a cache as one sequence of tokens and stories.
class CacheSource : public ActivationSource {
 public:
  explicit CacheSource(const std::string& dir);
  int64_t d() const override { return manifest_.d; }
  int64_t num_tokens() const override { return manifest_.tokens; }
  int64_t num_stories() const override { return static_cast<int64_t>(story_offsets_.size()) - 1; }
  int64_t story_begin(int64_t story) const override { return story_offsets_[story]; }
  int64_t story_length(int64_t story) const override { return story_offsets_[story + 1] - story_offsets_[story]; }
  void read_tokens(int64_t begin, int64_t count, float* out) override;
  Json describe() const override;
  std::string name() const override { return dir_; }
  void expect_random_access(bool random) override;
  bool has_token_ids() const override { return has_token_ids_; }
  int32_t token_id(int64_t token) const override;
  std::string locate(int64_t token) const override;  // "token T (shard_NNNNN.safetensors token t)"
  const CacheManifest& manifest() const { return manifest_; }

 private:
  std::string dir_;
  CacheManifest manifest_;
  std::vector<SafetensorsFile> shards_;
  std::vector<int64_t> shard_offsets_;  // first token of each shard, then the total
  std::vector<int64_t> story_offsets_;  // first token of each story, then the total
  size_t shard_of(int64_t token) const;  // the shard holding `token`
  bool has_token_ids_ = true;           // every shard has token_ids I32 [its tokens]
};

}  // namespace sae
