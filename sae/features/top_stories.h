// What sae_features computes (docs/contract.md §5): for a trained SAE of any architecture and a set of
// stories (a text run through a language model, or an activation file with story boundaries), the
// feature statistics of sae/train/feature_stats.h over every story (pass 1: each story encoded with
// the SAE's inference rule, sae_encode, and added as one batch), then each feature's top stories in
// the tutorial's JSON (pass 2: only the stories pass 1 kept are encoded again, for the activation of
// every token). The SAE sees its inputs normalised the way it was trained (cfg.json's sae_cpp).
// A crosscoder's input is its sources side by side, each normalised with its own dataset scale: from
// text, every read of one pass of each model (sae/data/text_batches.h window_activations, as its
// training read them: several hooks of the model, or the same hook of a second model); from
// activation files, one file per source (ConcatSource). Its features, top stories and strengths are
// those of the one encoding of all sources.
// Letters: T tokens of a story, D = d_in, F = d_sae.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/json.h"
#include "lm/decoder_model.h"
#include "lm/text_windows.h"
#include "lm/tokenizer.h"
#include "sae/data/activations.h"
#include "sae/data/batches.h"
#include "sae/data/text_batches.h"
#include "sae/params.h"
#include "sae/train/feature_stats.h"

namespace sae {

// One story as the SAE sees it.
struct StoryInput {
  int64_t index = -1;          // among the text's non-empty stories, or the file's stories, from 0
  std::vector<int32_t> ids;    // its token ids (empty: the data has none)
  Tensor x;                    // [T, D] normalised, on the SAE's device
  bool truncated = false;      // cut to the model's positions
};

// The stories, one at a time; rewind() starts again from the first.
class StoryInputs {
 public:
  virtual ~StoryInputs() = default;
  virtual bool next(StoryInput& story) = 0;  // false after the last one (or max_stories)
  virtual void rewind() = 0;
};

// Where the stories of a text come from and how the model reads them.
struct TextStoryOptions {
  std::string text;                 // .txt or .jsonl, plain or compressed (lm/text_data.h)
  std::string text_field = "text";
  HookSite site;                    // where the SAE reads (with no `reads`)
  int32_t bos = -1;                 // before each story (lm/text_windows.h); its row is not the SAE's input
  int64_t context_size = 0;         // positions a story may take, the BOS included (0: the model's)
  std::vector<TextRead> reads = {}; // a crosscoder's sources, in order (model 1: the second model)
};
// A text through `model` (and `model_b` for reads of a second model) up to the hook point(s); stories
// longer than the context are cut to it (StoryInput::truncated); the BOS row, when there is one, is
// left out. max_stories 0: all. Each read is a column block normalised with its own scale
// (normalization.scales: one per read; for a single read its first).
std::unique_ptr<StoryInputs> text_story_inputs(DecoderModel& model, const BpeTokenizer& tokenizer,
                                               const TextStoryOptions& options, const InputNormalization& normalization,
                                               int64_t max_stories, Device device, DecoderModel* model_b = nullptr);
// An activation file or cache with story boundaries (UsageError without), token ids when it has them;
// a ConcatSource's column blocks (a crosscoder's files) each normalised with its own scale.
std::unique_ptr<StoryInputs> file_story_inputs(ActivationSource& source, const InputNormalization& normalization,
                                               int64_t max_stories, Device device);

struct GatherSummary {
  int64_t stories = 0, tokens = 0, truncated = 0;
};

// The stories `inputs` serves (after a rewind) through the SAE, rows of consecutive stories encoded
// together, at most `block` at once, never the whole T x F of a long file story: a story that fits a
// block is never split, a longer one fills blocks of its own. `take(story)` says whether a story is
// wanted; reading stops when `more()` is false. `use(story, begin, end, f)` gets each wanted story's
// rows [begin, end) in order, with their features f [end - begin, F] (a view into its block's).
// Both passes below are made of it, in blocks of `block_rows` (0: encode_block_rows,
// sae/arch/registry.h). The statistics know a top activation's neighbours' values within its block
// only for a story longer than a block (NaN across a block's edge, as across a token batch's in
// training); the entries' strengths are whole.
void encode_stories(const SaeParams& params, StoryInputs& inputs, int64_t block,
                    const std::function<bool(const StoryInput&)>& take, const std::function<bool()>& more,
                    const std::function<void(const StoryInput&, int64_t, int64_t, const Tensor&)>& use);
// Pass 1: every story through the SAE into statistics (step = the story's index).
FeatureStats gather_feature_stats(const SaeParams& params, StoryInputs& inputs, const FeatureStatsOptions& options,
                                  GatherSummary* summary = nullptr, int64_t block_rows = 0);

// A crosscoder's decoder norm per feature and source, ||W_dec[i, s d:(s+1) d]|| ([F, S] row-major;
// empty for one source): what sae_browser shows per feature and sae_features writes per entry.
std::vector<double> source_decoder_norms(const SaeParams& params);

// Pass 2: the tutorial's JSON, an array with one object per (feature, top story), features in order,
// each feature's stories largest first:
//   {"feature_idx", "step" (the story's index), "position" (of its largest activation), "tokens",
//    "strengths" (the tutorial's feature magnitude f_i ||W_dec[i]|| on every token, 6 significant
//    digits), "max_strength", "text" (the story decoded), "annotated_text" (each token's text, a
//    space, activation_block), "decoder_norm" (||W_dec[i]||, the whole row: f_i = strength / it)}
// and, for a crosscoder, "source_norms": the feature's decoder norm per source (6 significant
// digits), in its sources' order (a feature whose norm is near zero for a source does not write it:
// for model diffing, a latent of one model only).
// Without a tokenizer, tokens are written as "[id]" (or "[#position]" without ids).
// Each entry as its compact JSON text (what sae_features writes, a line each: the texts are held, not
// trees of Json values, which took about 11 times the file's size).
std::vector<std::string> top_story_entry_texts(const SaeParams& params, StoryInputs& inputs, const FeatureStats& stats,
                                               const BpeTokenizer* tokenizer, int64_t block_rows = 0);
// The same entries as one JSON array.
Json top_story_entries(const SaeParams& params, StoryInputs& inputs, const FeatureStats& stats,
                       const BpeTokenizer* tokenizer, int64_t block_rows = 0);

}  // namespace sae
