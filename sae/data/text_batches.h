// TextBatcher: training batches computed from text by the language model, as the original does in
// its training loop: each story of the corpus (lm/text_data.h) is tokenized (byte-level BPE), cut
// into windows (lm/text_windows.h: at most --context-size positions, each starting with the BOS
// when --prepend-bos says so; the BOS rows are left out unless keep_bos),
// run through the model up to the requested hook point only (lm/hook_points.h; the blocks after it
// are neither loaded nor run), and
// normalised like any other batch (normalize_batch).
//   story mode:  one story per batch, in corpus order, starting over at the end (a new epoch)
//   token mode:  stories are gathered into chunks of at least chunk_tokens tokens (a chunk ends at a
//                story's end); each chunk's tokens are served in a random order (RandomPermutation
//                seeded by the seed and the chunk's number), N per batch, batches running on into
//                the next chunk. (A shuffle across the whole corpus needs an activation cache,
//                sae_cache, and --data CACHE/.)
// Without --context-size a window is the model's P positions, and a story longer than that is an
// error naming it, or, with split_long_stories, cut into windows; with --context-size every story is
// cut into windows of that many positions (SAELens's way). Each window is normalised and trained
// on as a story.
// The position (text offset, epoch, chunk, cursor) is saved in checkpoints; a resumed run re-reads
// from the start of the story or chunk it was in and skips what it had served, so resume is
// bit-exact on the same build and machine.
// Letters: T tokens of a story, D the width at the hook point, P the model's positions.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lm/decoder_model.h"
#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "lm/tokenizer.h"
#include "sae/data/batches.h"

namespace sae {

// The check every program makes before it runs a text through a model, with one message, the same
// in every program (sae_train, sae_cache, sae_eval, sae_steer, sae_features): the tokenizer's ids
// fit the model's vocabulary (DataError naming the model's config.json). (--layer and --hook are
// checked by lm/hook_points.h hook_choice and resolve_hook_site, also the same in every program.)
void check_tokenizer_fits_model(const BpeTokenizer& tokenizer, const DecoderConfig& model);
// A second model (--model-b, folder dir_b) reads text as the first does: `tokenizer`'s ids fit its
// vocabulary, and its own tokenizer, when its folder has one, has the same vocabulary size and gives
// the same ids for a probe text (DataError naming dir_b otherwise).
void check_same_tokenizer(const std::string& dir_b, const BpeTokenizer& tokenizer, const DecoderModel& model_b);

// One activation a text batch holds: a hook site of the model (0) or of the second model (1: --model-b,
// the same tokens through another model of the same tokenizer, for model diffing).
struct TextRead {
  int model = 0;
  HookSite site;
};

struct TextDataOptions {
  std::string text;             // the corpus (.txt or .jsonl)
  HookSite site = {2, HookPoint::ResidPre};  // where the activations are read (resolved by the model)
  // Several activations side by side, in this order (a transcoder's input and target, a crosscoder's
  // sources; one column block each), all from one pass of each model; empty: `site` alone.
  std::vector<TextRead> reads;
  std::string text_field = "text";  // JSON lines: the field holding the text
  bool split_long_stories = false;
  int64_t chunk_tokens = 65536;  // token mode: tokens shuffled together
  int32_t bos = -1;              // the token before every window (lm/text_windows.h resolve_bos); -1: none
  int64_t context_size = 0;      // positions per window (0: the model's)
  bool keep_bos = false;         // train on the BOS positions too
};

class TextBatcher : public BatchSource {
 public:
  // batch_tokens == 0 selects story mode. The models and tokenizer must outlive the batcher; model_b
  // is read by options.reads of model 1.
  TextBatcher(DecoderModel& model, const BpeTokenizer& tokenizer, const TextDataOptions& options, int64_t batch_tokens,
              Normalization normalization, DatasetScales dataset_scale, uint64_t seed, DecoderModel* model_b = nullptr);
  int64_t d() const override { return d_; }
  std::vector<int64_t> block_widths() const override { return widths_; }
  int64_t max_batch_tokens() const override { return max_tokens_; }
  int64_t next(float* raw, float* normalized, BatchStats& stats) override;
  Json state() const override;
  void restore(const Json& state) override;
  // Token mode only: replica `part` runs the model on the pieces i of chunk c with
  // (i + c) mod parts = part (zeros elsewhere) and sum_over_parts completes the chunk, so each replica
  // computes its share of the activations and the batches equal one process's.
  void set_part(int64_t part, int64_t parts, const SumOverParts& sum_over_parts) override;
  // Token mode only (story mode: false): rank `part` runs the model on its pieces of each chunk as
  // set_part does, but keeps every row of each batch (sae_train --distribute).
  bool share_computation(int64_t part, int64_t parts, const SumOverParts& sum_over_parts) override;
  ComputeCounts compute_counts() const override { return counts_; }

 private:
  // The next piece of text to train on: a story, or a piece of a long one. Its activations [T, D]
  // go to `out` (host; zeros without running the model when !compute); returns T. Starts a new
  // epoch at the end of the corpus.
  int64_t next_piece(std::vector<float>& out, bool compute = true);
  void fill_chunk();
  // The origin of row r of the piece next_piece served last: its story and position, or (-1, -1)
  // for a BOS row.
  std::pair<int64_t, int64_t> piece_row_origin(int64_t r) const;

  DecoderModel& model_;
  const BpeTokenizer& tokenizer_;
  TextDataOptions options_;
  StoryReader reader_;
  int64_t batch_tokens_, max_tokens_;
  Normalization normalization_;
  DatasetScales dataset_scale_;
  uint64_t seed_;
  DecoderModel* model_b_;
  std::vector<int64_t> widths_;  // per read
  int64_t d_ = 0;
  // Where the next piece comes from: the start of its story (re-read on resume), which piece of it,
  // in which epoch. A story's pieces are 0 .. ceil(T / P) - 1; unsplit stories have one.
  struct PiecePosition {
    TextPosition story;
    int64_t piece = 0, epoch = 0;
    Json to_json() const;
    static PiecePosition from_json(const Json& j);
  };
  void seek_piece(const PiecePosition& position);

  PiecePosition at_;               // the next piece
  std::vector<int32_t> story_ids_;  // the story at_ is in, tokenized (empty: read it when needed)
  std::string story_where_;
  // Token mode: the chunk being served, from its first piece's position.
  PiecePosition chunk_start_;
  int64_t chunk_index_ = -1, cursor_ = 0;
  int64_t part_ = 0, parts_ = 1, part_begin_ = 0, part_end_ = 0;  // a replica's rows of each batch
  SumOverParts sum_over_parts_;
  ComputeCounts counts_;  // token mode: the pieces of the chunks filled, and those run here
  std::vector<float> chunk_;  // [chunk tokens, D]
  std::optional<RandomPermutation> order_;  // the chunk's serving order
  std::vector<float> piece_;  // scratch [T, D]
  // Feature statistics (BatchSource::record_origins): the story of story_ids_, and of the piece
  // next_piece served last its story, first position and (when recording) its story's token ids.
  int64_t story_index_ = -1, piece_story_ = -1, piece_begin_ = 0;
  bool piece_bos_row_ = false;  // row 0 of the last piece is a kept BOS
  WindowOptions windows_;
  std::vector<int32_t> piece_story_ids_;
  std::vector<int64_t> chunk_story_, chunk_position_;  // token mode, per token of chunk_
  std::vector<int32_t> chunk_ids_;
  void record_story_origins(int64_t n);                            // story mode: the piece just served
  void record_chunk_origin(int64_t row, int64_t chunk_token);      // token mode: one row
};

// SAELens's norm scaling factor over the corpus's first stories (up to sample_tokens tokens, each
// story cut to the model's positions): s = sqrt(D) / mean ||x||, so mean ||s x|| = sqrt(D); one per
// read (options.reads). With mean_squared_norms, also each read's raw mean ||x||^2.
DatasetScales estimate_text_dataset_scale(DecoderModel& model, const BpeTokenizer& tokenizer,
                                          const TextDataOptions& options, int64_t sample_tokens = 16384,
                                          DecoderModel* model_b = nullptr,
                                          std::vector<double>* mean_squared_norms = nullptr);

// The reads of `options` resolved by their models (`site` alone when there are no reads), and the
// width of each. UsageError for a read of model 1 without a second model.
std::vector<TextRead> resolve_text_reads(DecoderModel& model, DecoderModel* model_b, const TextDataOptions& options);
// One window's activations at every read, side by side ([rows, sum of widths] into out; the BOS row
// dropped when `skip_first`), from one forward pass of each model, stopped at its last read.
void window_activations(DecoderModel& model, DecoderModel* model_b, const std::vector<TextRead>& reads,
                        const std::vector<int32_t>& ids, bool skip_first, std::vector<float>& out);

}  // namespace sae
