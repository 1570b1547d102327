// open_training_data (see training_data.h).
#include "sae/train/training_data.h"

#include "lm/model_loader.h"
#include "sae/data/text_batches.h"

namespace sae {

TrainingData open_training_data(const TrainConfig& config, Device device, std::optional<double> saved_scale) {
  TrainingData data;
  if (config.data == "text") {
    // Only what the hook point needs is loaded: the blocks after it are never read from disk.
    const ModelFolder folder = read_model_config(config.model);
    const HookSite site = resolve_hook_site(folder.config, config.hook_site(), config.hook.empty() ? "--layer" : "--hook");
    data.model = std::make_unique<DecoderModel>(
        load_decoder_model(config.model, device, ModelPart::up_to(site, folder.config.num_layers)));
    data.tokenizer = std::make_unique<BpeTokenizer>(BpeTokenizer::from_model_dir(config.model));
    if (data.tokenizer->vocab_size() > data.model->config().vocab_size)
      throw DataError(cat(config.model, ": the tokenizer has ", data.tokenizer->vocab_size(), " ids, the model only ",
                          data.model->config().vocab_size));
    TextDataOptions options;
    options.text = config.text;
    options.site = site;
    if (config.context_size > folder.config.max_positions)
      throw UsageError(cat("--context-size ", config.context_size, " is more than the model's ",
                           folder.config.max_positions, " positions"));
    options.text_field = config.text_field;
    options.bos = resolve_bos(config.prepend_bos, *data.tokenizer);
    options.context_size = config.context_size;
    options.keep_bos = config.keep_bos_activations;
    options.split_long_stories = config.split_long_stories;
    options.chunk_tokens = config.text_chunk_tokens;
    data.dataset_scale = saved_scale ? *saved_scale
                                     : (config.normalize == Normalization::Dataset
                                            ? estimate_text_dataset_scale(*data.model, *data.tokenizer, options)
                                            : 1.0);
    auto text = std::make_unique<TextBatcher>(*data.model, *data.tokenizer, options, config.batch_tokens,
                                              config.normalize, data.dataset_scale, config.seed);
    data.d = data.model->config().hook_width(site);
    data.description = Json::object();
    data.description["kind"] = "text";
    data.description["text"] = config.text;
    data.description["model"] = config.model;
    data.description["hook_name"] = hook_name(site);
    const int64_t k = hidden_states_index(site, folder.config.num_layers);
    if (k >= 0) data.description["layer"] = k;  // the hidden_states index, when the site is one
    if (k >= 0) data.description["hidden_states"] = cat("hidden_states[", k, "]");
    data.description["model_family"] = folder.config.family;
    Json saelens = Json::object();  // cfg.json's metadata, as SAELens writes it (sae/train/checkpoint.cpp)
    saelens["model_name"] = folder.name;
    saelens["hook_name"] = hook_name(site);
    saelens["hook_head_index"] = Json();
    saelens["context_size"] = config.context_size > 0 ? config.context_size : folder.config.max_positions;
    saelens["prepend_bos"] = options.bos >= 0;
    data.description["saelens_metadata"] = saelens;
    data.description["tokenizer"] = data.tokenizer->source();
    data.description["bos_id"] = options.bos;
    data.description["bos_activations"] = config.keep_bos_activations ? "keep" : "skip";
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
  return data;
}

}  // namespace sae
