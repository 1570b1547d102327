// The data a run trains on, opened from its configuration: the built-in synthetic generator, an
// activation file or cache (sae/data: Batcher over an ActivationSource; several side by side for a
// transcoder or a crosscoder: ConcatSource), or a text corpus run through a language model inside
// the loop (--model DIR --text FILE, and --model-b DIR: TextBatcher over lm/decoder_model and
// lm/tokenizer, each model loaded only up to the last hook it reads). A row of a batch holds every
// read (sae/train/dictionary_reads.h) side by side, one column block each, each normalised on its
// own. The trainer and the study drivers see a BatchSource and a description of where the data came from.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lm/decoder_model.h"
#include "lm/tokenizer.h"
#include "sae/data/activations.h"
#include "sae/data/batches.h"
#include "sae/data/synthetic.h"
#include "sae/train/train_config.h"

namespace sae {

struct TrainingData {
  std::unique_ptr<ActivationSource> activations;  // synthetic, file(s) or cache(s) (not for text)
  std::unique_ptr<DecoderModel> model, model_b;   // text only (up to the last hook read)
  std::unique_ptr<BpeTokenizer> tokenizer;        // text only
  int64_t num_layers = 0;                         // text only: the model's layers (all of them)
  std::unique_ptr<BatchSource> batches;
  int64_t d = 0;                   // a row's width: every read side by side
  std::vector<std::string> reads;  // one column block each, in order
  std::vector<int64_t> widths, offsets;
  DatasetScales dataset_scale;     // per block: the saved ones on --resume, else estimated or 1
  Json description;                // for config.json and cfg.json
  // Per block: mean ||x||^2 of its columns as the dictionary sees them (after normalisation): the
  // block's width for --normalize story (by construction) and dataset (nominal: mean ||s x|| =
  // sqrt(width), so mean ||s x||^2 is the width times E||x||^2 / (E||x||)^2 >= 1, not measured), measured on
  // a sample for none (only with --target-l0: the L0 controller's scale of lambda; the width otherwise).
  std::vector<double> mean_squared_norms;
  const SyntheticSource* synthetic = nullptr;  // for concept recovery

  // The block of `read` (Error when the data does not hold it).
  size_t block(const std::string& read) const;
};

// A run's columns of the data's rows (sae/train/dictionary_reads.h): its input blocks and its target
// blocks (the same for an SAE and a crosscoder).
struct RunColumns {
  std::vector<size_t> in, out;
  int64_t d_in = 0, d_out = 0;
  bool whole_row = false;         // the input is the whole row, in order: no copy
  bool target_is_input = true;    // an SAE or a crosscoder
  // The input columns of rows [n, data.d] into x [n, d_in]; the target's into target [n, d_out].
  void gather_input(const TrainingData& data, const float* rows, int64_t n, float* x) const;
  void gather_target(const TrainingData& data, const float* rows, int64_t n, float* target) const;
  // The run's dataset scales: its input blocks', then (a transcoder's) its target blocks'.
  DatasetScales scales(const TrainingData& data) const;
  // Mean ||x||^2 of the run's input (TrainingData::mean_squared_norms of its input blocks, summed).
  double input_mean_squared_norm(const TrainingData& data) const;
  // The raw moments of the run's own blocks (the same blocks, in the same order, give the same numbers
  // whether the batch holds only them or other runs' reads too).
  RawMoments raw_moments(const BatchStats& stats) const;
};
RunColumns run_columns(const TrainingData& data, const std::vector<std::string>& in, const std::vector<std::string>& out);

// Opens `reads` of `config`'s data (the models on `device`). saved_scales: one per read, of a resumed
// run; otherwise --normalize dataset estimates them from the data.
TrainingData open_training_data(const TrainConfig& config, const std::vector<std::string>& reads, Device device,
                                const std::optional<DatasetScales>& saved_scales);
// The run's own reads: its input, then (a transcoder's) its target.
std::vector<std::string> own_reads(const TrainConfig& config);
TrainingData open_training_data(const TrainConfig& config, Device device, const std::optional<DatasetScales>& saved_scales);

}  // namespace sae
