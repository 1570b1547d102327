// The data a run trains on, opened from its configuration: the built-in synthetic generator, an
// activation file, an activation cache (sae/data: Batcher over an ActivationSource), or a text
// corpus run through a language model inside the loop (--model DIR --text FILE: TextBatcher over
// lm/decoder_model and lm/tokenizer, loaded only up to the hook point it reads). The trainer and the study drivers see a BatchSource and a
// description of where the data came from.
#pragma once
#include <memory>
#include <optional>

#include "lm/decoder_model.h"
#include "lm/tokenizer.h"
#include "sae/data/activations.h"
#include "sae/data/batches.h"
#include "sae/data/synthetic.h"
#include "sae/train/train_config.h"

namespace sae {

struct TrainingData {
  std::unique_ptr<ActivationSource> activations;  // synthetic, file or cache (not for text)
  std::unique_ptr<DecoderModel> model;            // text only (up to the hook point)
  std::unique_ptr<BpeTokenizer> tokenizer;       // text only
  std::unique_ptr<BatchSource> batches;
  int64_t d = 0;
  double dataset_scale = 1.0;  // the one used: the saved one on --resume, else estimated or 1
  Json description;            // for config.json and cfg.json
  const SyntheticSource* synthetic = nullptr;  // for concept recovery
};

// Opens the data of `config` (the model on `device`). saved_scale: the dataset scale of a resumed
// run; otherwise --normalize dataset estimates it from the data.
TrainingData open_training_data(const TrainConfig& config, Device device, std::optional<double> saved_scale);

}  // namespace sae
