// Batcher: turns an ActivationSource into training batches, with its position saved in checkpoints.
//   story mode (the original): batch k is story k of the source, in order, wrapping around;
//   token mode (the modern way): N tokens per batch, drawn without replacement from a fresh random
//   permutation of all tokens each epoch (a Feistel-network permutation: O(1) memory for any size).
// Normalisation (the study's per-story form, dataset-level scaling, or none; at inference also the
// per-token forms of SAELens and OpenAI's SAEs) is applied to the batch, column block by column block
// (normalize_blocks, with BlockNormSums for the whole row's moments); denormalize_blocks is its
// inverse for a dictionary's output.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"
#include "sae/data/activations.h"
#include "tensor/tensor.h"

namespace sae {

// Story, Dataset, None, and the per-token forms of SAELens and OpenAI (an SAE's input only), each
// token on its own, which SAEs trained elsewhere also declare (cfg.json normalize_activations;
// OpenAI's TopK checkpoints; docs/contract.md §4):
//   LayerNorm:   x_n = (x - mu) / (sigma + 1e-5), mu and sigma (unbiased) of the token's d values;
//                x = x_n * sigma + mu back (SAELens's layer_norm and OpenAI's LN, exactly so);
//   NormRescale: x_n = x * sqrt(d) / ||x||, back x = x_n * ||x|| / sqrt(d) (constant_norm_rescale).
enum class Normalization { Story, Dataset, None, LayerNorm, NormRescale };
// story | dataset | none | layer_norm | constant_norm_rescale; UsageError else
Normalization parse_normalization(const std::string& name);
bool per_token(Normalization n);  // LayerNorm or NormRescale
// UsageError for --normalize story with token batches (batch_tokens > 0): per-story statistics need
// story batches. Said by the options' validation and by both batchers.
void check_story_normalization(int64_t batch_tokens, Normalization normalization);
const char* normalization_name(Normalization n);

// A bijection of [0, n) chosen by `seed` (4-round Feistel network on the smallest even power of
// two >= n, with cycle walking).
class RandomPermutation {
 public:
  RandomPermutation(uint64_t n, uint64_t seed);
  uint64_t operator()(uint64_t index) const;

 private:
  uint64_t n_, half_bits_, half_mask_;
  uint64_t keys_[4];
};

// The raw moments of one column block of a batch: its element count, mean, sum of squared deviations
// from that mean, and standard deviation (unbiased).
struct RawMoments {
  int64_t count = 0;
  double mean = 0, m2 = 0, std = 0;
};
// Mean and std of several blocks together (blocks in the given order; one block: its own numbers).
RawMoments combine_moments(const std::vector<RawMoments>& blocks);

struct BatchStats {
  double raw_mean = 0, raw_std = 0;  // of the raw batch (all elements; std unbiased)
  double norm_shift = 0, norm_scale = 1;  // x_n = (x - shift) * scale
  std::vector<RawMoments> blocks;    // per column block of the row (one for an SAE's data)
  // A per-token normalisation's numbers, one per row (empty for the other kinds): row r was
  // normalised as x_n = (x - row_shift[r]) * row_scale[r] and comes back as
  // x = x_n * row_unscale[r] + row_shift[r] (layer_norm divides by sigma + 1e-5, multiplies by sigma).
  std::vector<double> row_shift, row_scale, row_unscale;
};

// The dataset scales of a row's column blocks (ActivationSource::block_widths): one per block, each
// block's mean ||s x|| = sqrt(its width). One number for the one block of an SAE's data.
struct DatasetScales {
  std::vector<double> per_block;
  DatasetScales(double scale = 1.0) : per_block{scale} {}  // NOLINT: one block
  DatasetScales(std::vector<double> scales) : per_block(std::move(scales)) {}  // NOLINT
  double first() const { return per_block.at(0); }
  Json to_json() const;  // a number for one block, else an array
  static DatasetScales from_json(const Json& j);  // DataError unless positive finite numbers
};

// How a trained dictionary expects its data, from cfg.json's sae_cpp block, or for a folder from
// elsewhere its normalize_activations (layer_norm, constant_norm_rescale: per token; any other: none):
// the normalisation and one dataset scale per column block (an SAE's one; a transcoder's input then
// target; a crosscoder's sources). DataError naming cfg_path when malformed.
struct InputNormalization {
  Normalization kind = Normalization::None;
  DatasetScales scales;
  // Trained on its BOS rows too (sae_cpp.data.bos_activations "keep"): a per-story normalisation
  // took each window's BOS row into its statistics, so readers of its windows do the same.
  bool with_bos_rows = false;
  double input_scale() const { return scales.first(); }
};
InputNormalization trained_normalization(const Json& cfg, const std::string& cfg_path);

// Checks a batch [n, d] for NaN/Inf (DataError naming the source and the token, found through
// token_of_row), computes its statistics (double accumulation, std unbiased) and writes
// normalized = (raw - shift) * scale for the chosen normalisation: story, (x - mean) / std * sqrt(d)
// over all n*d elements; dataset, x * dataset_scale; none, x; the per-token forms, each row with its
// own numbers (stats.row_*). DataError for layer_norm with d < 2 (a token's sigma needs two values)
// and for constant_norm_rescale of a token whose activations are all zero (no norm to divide by).
BatchStats normalize_batch(const float* raw, float* normalized, int64_t n, int64_t d, Normalization normalization,
                           double dataset_scale, const std::function<int64_t(int64_t)>& token_of_row,
                           const std::string& source_name);
// The same for a row of column blocks (widths summing to d): each block normalised on its own with
// its scale (story: its own mean and std). The statistics returned are of the whole row (raw) and of
// the first block (shift, scale; per token, its row_*). One block: normalize_batch itself. (A
// per-token normalisation of several blocks serves SAEs trained side by side, each on its own
// block: denormalize_blocks takes one block.)
BatchStats normalize_blocks(const float* raw, float* normalized, int64_t n, const std::vector<int64_t>& widths,
                            Normalization normalization, const DatasetScales& scales,
                            const std::function<int64_t(int64_t)>& token_of_row, const std::string& source_name);

// The inverse of normalize_blocks for a dictionary's output rows [n, sum(widths)]: each column block
// brought back to the data's scale, raw = normalized / scale + shift, in double, with the shift and
// scale normalize_blocks used (story: the block's mean and sqrt(width) / std from stats.blocks;
// dataset: the block's scale; none: a copy; per token: each row's stats.row_*). An SAE's and a
// crosscoder's output blocks are its input
// blocks; a transcoder's one block is its target, with the target's scale.
void denormalize_blocks(const float* normalized, float* raw, int64_t n, const std::vector<int64_t>& widths,
                        Normalization normalization, const DatasetScales& scales, const BatchStats& stats);

// normalize_batch on the device of `rows` ([n, D] float32, raw in, normalised out, in place):
// device_stats ([2] float64, same device) = raw mean and raw std (unbiased), with float64 sums; the
// shift and scale as normalize_batch makes them (story: from those statistics, on the device;
// dataset, none: known, also written to stats.norm_shift / norm_scale). Nothing is read back, and
// nothing is checked: a source that makes batches on a device makes finite ones, and a story of
// zero variance gives non-finite values (and so a diverged run) where normalize_batch throws. On the
// CPU the result equals normalize_batch's bit for bit; on CUDA the sums run in another order. Error
// for a per-token normalisation (it runs on the host: a Batcher with one makes no batch on a device).
void normalize_batch_on_device(Tensor& rows, Tensor& device_stats, Normalization normalization, double dataset_scale,
                               BatchStats& stats);
// The raw mean and std from device_stats (one read-back), into stats.
void read_device_stats(const Tensor& device_stats, BatchStats& stats);

// Where the rows of a batch came from, for feature statistics (sae/train/feature_stats.h): row r is
// the token at position[r] of story story[r] (stories counted from 0 in the source's order: the story
// index of an activation file, a cache or a corpus); story -1 means the data has no stories, and
// position is then the token's index in the source. context holds, per row, the token ids at
// positions position - radius .. position + radius of its story, [rows, 2 radius + 1]: -1 where
// the story has no token there (or where it is not known), -2 for a token whose id is not known (the
// data has no token ids).
struct BatchOrigins {
  int64_t radius = 0;
  bool has_token_ids = false;
  std::vector<int64_t> story, position;  // [rows]
  std::vector<int32_t> context;          // [rows, 2 radius + 1]
  int64_t rows() const { return static_cast<int64_t>(story.size()); }
  int64_t width() const { return 2 * radius + 1; }
  void resize(int64_t rows, int64_t radius);  // context filled with -1
};

// Where training batches come from: activation files or synthetic data (Batcher, below), or text
// run through a language model (TextBatcher, text_batches.h). The trainer and the prefetcher see
// only this.
// The rows [begin, end) of each N-token batch that data-parallel replica `part` of `parts` keeps.
// UsageError for story batches (N = 0: a story is one batch) and for fewer rows than replicas.
std::pair<int64_t, int64_t> replica_rows(int64_t batch_tokens, int64_t part, int64_t parts);

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual int64_t d() const = 0;
  // The row's column blocks (each normalised on its own; ActivationSource::block_widths).
  virtual std::vector<int64_t> block_widths() const { return {d()}; }
  virtual int64_t max_batch_tokens() const = 0;
  // Fills raw and normalized (host float32, each [max_batch_tokens, D]) with the next batch;
  // returns its number of tokens. Throws DataError if the batch holds NaN or Inf.
  virtual int64_t next(float* raw, float* normalized, BatchStats& stats) = 0;
  // Position in the data, for exact resume.
  virtual Json state() const = 0;
  virtual void restore(const Json& state) = 0;
  // Data-parallel replicas of a distributed run (docs/distributed.md): from now on next() returns
  // only rows [N part / parts, N (part + 1) / parts) of each N-token batch, reading only those, and
  // the position moves on as for the whole batch (so a checkpoint's position serves any number of
  // replicas). A source whose rows are computed (text through the language model) computes its share
  // and completes the rest with sum_over_parts (a sum over the replicas, in place; every replica calls
  // it at the same points of next() and restore()). UsageError for a source that cannot be split;
  // call before the first batch.
  using SumOverParts = std::function<void(float* values, int64_t count)>;
  virtual void set_part(int64_t part, int64_t parts, const SumOverParts& sum_over_parts);
  // Ranks that each train other SAEs on the same batches (sae_train --distribute): every rank still
  // gets whole batches, but a source whose rows are computed (text through the language model, token
  // batches) computes only share `part` of `parts` of them and completes the rest with
  // sum_over_parts (a sum over every rank, at the same points of next() and restore() on each).
  // Returns false, and changes nothing, for a source with nothing to share (activation files,
  // synthetic data, story batches). Call before the first batch.
  virtual bool share_computation(int64_t part, int64_t parts, const SumOverParts& sum_over_parts) { return false; }
  // What this rank computed of the batches' rows since it was made (or since share_computation began
  // sharing): the language model's windows run here, of all windows the batches were filled from,
  // and the floats completed by sum_over_parts (zeros for sources that compute nothing).
  struct ComputeCounts {
    int64_t windows_run = 0, windows = 0, floats_summed = 0;
  };
  virtual ComputeCounts compute_counts() const { return {}; }
  // Sources that make their batches on a device (the synthetic generator, with --device-data):
  // the next batch, normalised, into `out` (float32 [max_batch_tokens, D] on that device), the same
  // tokens next() would give (docs/contract.md §3 says where the numbers differ). Nothing is read
  // back: `stats` gets the normalisation's shift and scale only when they are known on the host
  // (dataset, none); `device_stats` ([2] float64 on the device: raw mean, raw std, made on first
  // use) holds the batch's statistics. Returns the number of tokens.
  virtual bool generates_on_device(Device device) const { return false; }
  virtual int64_t next_on_device(Tensor& out, Tensor& device_stats, BatchStats& stats);
  // Whether to make batches on the device when the source can (off until asked: --device-data).
  virtual void set_generate_on_device(bool on) {}

  // From now on next() also records where each row of its batch came from (origins()), with the
  // token ids of `radius` tokens on each side. Off until called: then next() does nothing more.
  void record_origins(int64_t radius) { origins_radius_ = radius; }
  bool recording_origins() const { return origins_radius_ >= 0; }
  int64_t origins_radius() const { return origins_radius_; }  // -1 while not recording
  const BatchOrigins& origins() const { return origins_; }  // of the batch next() returned last

 protected:
  int64_t origins_radius_ = -1;
  BatchOrigins origins_;
};

class Batcher : public BatchSource {
 public:
  // batch_tokens == 0 selects story mode. dataset_scale (one per block of the source) is used by
  // Normalization::Dataset.
  Batcher(ActivationSource& source, int64_t batch_tokens, Normalization normalization, DatasetScales dataset_scale,
          uint64_t seed);
  int64_t d() const override { return source_.d(); }
  std::vector<int64_t> block_widths() const override { return widths_; }
  int64_t max_batch_tokens() const override { return max_tokens_; }
  int64_t next(float* raw, float* normalized, BatchStats& stats) override;
  Json state() const override;
  void restore(const Json& state) override;
  void set_part(int64_t part, int64_t parts, const SumOverParts& sum_over_parts) override;
  bool generates_on_device(Device device) const override;
  int64_t next_on_device(Tensor& out, Tensor& device_stats, BatchStats& stats) override;
  void set_generate_on_device(bool on) override { generate_on_device_ = on; }

 private:
  bool generate_on_device_ = false;
  // The next batch's tokens (story mode: the story's, in order; token mode: the permutation's next
  // batch_tokens): fills token_list_, returns its size, sets story and first_token.
  int64_t pick_tokens(int64_t& story, int64_t& first_token);
  ActivationSource& source_;
  int64_t part_begin_ = 0, part_end_ = 0;  // token mode: this replica's rows of each batch
  std::vector<int64_t> part_list_;         // their tokens
  int64_t batch_tokens_, max_tokens_;
  Normalization normalization_;
  DatasetScales dataset_scale_;
  std::vector<int64_t> widths_;
  uint64_t seed_;
  int64_t next_story_ = 0;                   // story mode
  int64_t epoch_ = 0, cursor_ = 0;           // token mode
  std::vector<int64_t> token_list_;
  // Feature statistics: fills origins_ for a batch of n rows, the tokens [first_token, first_token + n)
  // of `story` (story mode) or token_list_ (token mode, story < 0).
  void record_batch_origins(int64_t n, int64_t story, int64_t first_token);
};

// The sums a dataset scale is estimated from, per column block of the rows added: each row's block
// norm ||x_b|| and its square. scales() is SAELens's sqrt(width) / mean ||x_b|| per block (DataError
// naming `source`, and the block when there are several, when the squares overflow or every row
// is zero); mean_squared_norms() the raw mean ||x_b||^2.
class BlockNormSums {
 public:
  explicit BlockNormSums(std::vector<int64_t> widths);
  void add(const float* row);  // sum(widths) values
  DatasetScales scales(const std::string& source) const;
  std::vector<double> mean_squared_norms() const;

 private:
  std::vector<int64_t> widths_;
  std::vector<double> norms_, squares_;
  int64_t rows_ = 0;
};

// Estimates the dataset scale s with mean ||s x|| = sqrt(D) over a sample of up to `sample_tokens`
// tokens spread evenly through the source (SAELens's norm scaling factor, sqrt(D) / mean ||x||).
double estimate_dataset_scale(ActivationSource& source, int64_t sample_tokens = 65536);
// The same per column block (ActivationSource::block_widths); with mean_squared_norms, also each
// block's raw mean ||x||^2 over the same sample.
DatasetScales estimate_dataset_scales(ActivationSource& source, int64_t sample_tokens = 65536,
                                      std::vector<double>* mean_squared_norms = nullptr);

}  // namespace sae
