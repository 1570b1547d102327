// open_training_data (see training_data.h).
#include "sae/train/training_data.h"

#include "sae/data/text_batches.h"

namespace sae {

TrainingData open_training_data(const TrainConfig& config, Device device, std::optional<double> saved_scale) {
  TrainingData data;
  if (config.data == "text") {
    data.model = std::make_unique<GptNeo>(GptNeo::load(config.model, device));
    data.tokenizer = std::make_unique<Gpt2Tokenizer>(Gpt2Tokenizer::from_model_dir(config.model));
    check_tokenizer_fits_model(*data.tokenizer, data.model->config());
    check_hidden_states_index(config.layer, data.model->config());
    TextDataOptions options;
    options.text = config.text;
    options.layer = static_cast<int>(config.layer);
    options.split_long_stories = config.split_long_stories;
    options.chunk_tokens = config.text_chunk_tokens;
    data.dataset_scale = saved_scale ? *saved_scale
                                     : (config.normalize == Normalization::Dataset
                                            ? estimate_text_dataset_scale(*data.model, *data.tokenizer, options)
                                            : 1.0);
    auto text = std::make_unique<TextBatcher>(*data.model, *data.tokenizer, options, config.batch_tokens,
                                              config.normalize, data.dataset_scale, config.seed);
    data.d = data.model->config().hidden_size;
    data.mean_squared_norm = double(data.d);
    if (config.normalize == Normalization::None && config.target_l0 > 0) {  // raw: s with mean ||s x||^2 = D
      const double s = estimate_text_dataset_scale(*data.model, *data.tokenizer, options);
      data.mean_squared_norm = double(data.d) / (s * s);
    }
    data.description = Json::object();
    data.description["kind"] = "text";
    data.description["text"] = config.text;
    data.description["model"] = config.model;
    data.description["layer"] = config.layer;
    data.description["hidden_states"] = cat("hidden_states[", config.layer, "]");
    data.description["tokenizer"] = data.tokenizer->source();
    data.batches = std::move(text);
    return data;
  }
  data.activations = open_activations(config.data, config.synthetic);
  data.synthetic = dynamic_cast<const SyntheticSource*>(data.activations.get());
  data.d = data.activations->d();
  data.dataset_scale = saved_scale ? *saved_scale
                                   : (config.normalize == Normalization::Dataset ? estimate_dataset_scale(*data.activations) : 1.0);
  data.batches = std::make_unique<Batcher>(*data.activations, config.batch_tokens, config.normalize, data.dataset_scale,
                                           config.seed);
  data.description = data.activations->describe();
  data.mean_squared_norm = double(data.d);
  if (config.normalize == Normalization::None && config.target_l0 > 0) {
    const double s = estimate_dataset_scale(*data.activations);
    data.mean_squared_norm = double(data.d) / (s * s);
  }
  return data;
}

}  // namespace sae
