// open_training_data (see training_data.h).
#include "sae/train/training_data.h"

#include <algorithm>
#include <filesystem>
#include <optional>

#include "io/file_fingerprint.h"
#include "lm/model_loader.h"
#include "sae/data/activation_cache.h"
#include "sae/data/concat_source.h"
#include "sae/data/text_batches.h"
#include "sae/train/dictionary_reads.h"
#include "sae/train/memory_check.h"

namespace sae {

size_t TrainingData::block(const std::string& read) const {
  for (size_t b = 0; b < reads.size(); ++b)
    if (reads[b] == read) return b;
  throw Error(cat("training data: no column block for ", printable(read)));
}

namespace {

// Each input block's mean ||x||^2 as its normalisation makes it: w^2 per story (every element of a
// story scaled to variance w, the tutorial's normalisation), w for dataset normalisation (its scale
// makes the mean norm sqrt(w); the mean square is a few % more). Raw inputs (none) are measured by
// the caller.
std::vector<double> nominal_mean_squared_norms(const std::vector<int64_t>& widths, Normalization normalize) {
  std::vector<double> e;
  for (int64_t w : widths) e.push_back(normalize == Normalization::Story ? double(w) * double(w) : double(w));
  return e;
}

// A model read up to the last of `sites` (already resolved against its config).
DecoderModel load_up_to(const std::string& dir, const ModelFolder& folder, const std::vector<HookSite>& sites,
                        Device device) {
  HookSite last = sites.front();
  for (const HookSite& s : sites)
    if (reached_before(last, s, folder.config.residual == ResidualWiring::Parallel)) last = s;
  return load_decoder_model(dir, device, ModelPart::up_to(last, folder.config.num_layers));
}

TrainingData open_text(const TrainConfig& config, const std::vector<std::string>& reads, Device device,
                       const std::optional<DatasetScales>& saved) {
  TrainingData data;
  const bool single = reads.size() == 1;
  const std::string what = single ? (config.hook.empty() ? "--layer" : "--hook") : "a read";
  const ModelFolder folder = read_model_config(config.model);
  std::optional<ModelFolder> folder_b;
  if (!config.model_b.empty()) folder_b = read_model_config(config.model_b);
  TextDataOptions options;
  std::vector<HookSite> sites[2];
  for (const std::string& read : reads) {
    const TextReadName r = parse_text_read(read);
    if (r.model == 1 && !folder_b) throw UsageError(cat(read, ": a read of --model-b without --model-b"));
    const HookSite site = resolve_hook_site(r.model == 0 ? folder.config : folder_b->config, r.site, what);
    options.reads.push_back(TextRead{r.model, site});
    sites[r.model].push_back(site);
  }
  if (sites[0].empty()) throw UsageError("a crosscoder over two models reads --model too");
  data.model = std::make_unique<DecoderModel>(load_up_to(config.model, folder, sites[0], device));
  data.tokenizer = std::make_unique<BpeTokenizer>(BpeTokenizer::from_model_dir(config.model));
  check_tokenizer_fits_model(*data.tokenizer, data.model->config());
  if (folder_b) {
    data.model_b = std::make_unique<DecoderModel>(load_up_to(config.model_b, *folder_b, sites[1], device));
    check_same_tokenizer(config.model_b, *data.tokenizer, *data.model_b);
  }
  options.text = config.text;
  options.site = options.reads.front().site;
  if (single) options.reads.clear();  // one read: the batcher's own path
  if (config.context_size > folder.config.max_positions)
    throw UsageError(cat("--context-size ", config.context_size, " is more than the model's ",
                         folder.config.max_positions, " positions"));
  options.text_field = config.text_field;
  options.bos = resolve_bos(config.prepend_bos, *data.tokenizer);
  if (!config.trained_before && config.keep_bos_activations && options.bos < 0)  // (docs/contract.md §5)
    throw UsageError(no_bos_to_keep(config.prepend_bos));
  options.context_size = config.context_size;
  options.keep_bos = config.keep_bos_activations;
  options.split_long_stories = config.split_long_stories;
  options.chunk_tokens = config.text_chunk_tokens;
  // A chunk of token batches holds its tokens' activations at every read: judged at a run's start (a
  // resume cannot change the option; a run that fitted goes on).
  if (config.batch_tokens > 0 && !config.trained_before) {
    int64_t width = 0;
    for (int m = 0; m < 2; ++m)
      for (const HookSite& site : sites[m]) width += (m == 0 ? folder.config : folder_b->config).hook_width(site);
    const double chunk_bytes = 4.0 * double(config.text_chunk_tokens) * double(width);
    const HostMemory memory = available_host_memory();
    if (memory.bytes >= 0 && chunk_bytes > 0.5 * memory.bytes)
      throw UsageError(cat("--text-chunk-tokens ", config.text_chunk_tokens, " holds that many tokens' activations (",
                           width, " float32 each: ", format_bytes(chunk_bytes), "), more than half of the ",
                           format_bytes(memory.bytes), " this process can get (", memory.source,
                           "): lower --text-chunk-tokens"));
  }
  DecoderModel* model_b = data.model_b.get();
  data.dataset_scale = saved ? *saved
                             : (config.normalize == Normalization::Dataset
                                    ? estimate_text_dataset_scale(*data.model, *data.tokenizer, options, 16384, model_b)
                                    : DatasetScales(std::vector<double>(reads.size(), 1.0)));
  auto text = std::make_unique<TextBatcher>(*data.model, *data.tokenizer, options, config.batch_tokens,
                                            config.normalize, data.dataset_scale, config.seed, model_b);
  data.widths = text->block_widths();
  data.mean_squared_norms = nominal_mean_squared_norms(data.widths, config.normalize);
  if (config.normalize == Normalization::None && config.target_l0 > 0)  // raw inputs: their own mean ||x||^2
    estimate_text_dataset_scale(*data.model, *data.tokenizer, options, 16384, model_b, &data.mean_squared_norms);
  const HookSite site = sites[0].front();
  data.num_layers = folder.config.num_layers;
  data.description = Json::object();
  data.description["kind"] = "text";
  data.description["text"] = config.text;
  data.description["text_fingerprint"] = file_fingerprint(config.text);  // checked on --resume
  data.description["model"] = config.model;
  data.description["model_fingerprint"] = model_weights_fingerprint(config.model);  // a replaced model, too
  if (folder_b) data.description["model_b"] = config.model_b;
  if (folder_b) data.description["model_b_fingerprint"] = model_weights_fingerprint(config.model_b);
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

// What a run from a cache records of where its activations came from (cfg.json's metadata, as a
// run from text records it, sae/train/checkpoint.cpp): the cache manifest's model, hook, context and
// BOS. The model's name and positions are read from its config.json when the folder is still there
// (else the folder's name, and no context_size).
Json cache_saelens_metadata(const Json& source) {
  Json saelens = Json::object();
  if (!source.is_object() || !source.has("hook_name") || !source.at("hook_name").is_string() || !source.has("model") ||
      !source.at("model").is_string())
    return saelens;
  const std::string model = source.at("model").as_string();
  std::optional<ModelFolder> folder;
  try {
    folder = read_model_config(model);
  } catch (const Error&) {
  }
  std::filesystem::path path = std::filesystem::path(model).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();  // "models/gpt2/"
  saelens["model_name"] = folder ? folder->name : path.filename().string();
  saelens["hook_name"] = source.at("hook_name");
  saelens["hook_head_index"] = Json();
  if (source.has("context_size") && source.at("context_size").is_number())
    saelens["context_size"] = source.at("context_size");
  else if (folder)
    saelens["context_size"] = folder->config.max_positions;
  saelens["prepend_bos"] = source.has("bos_id");
  return saelens;
}

// Activation caches say where their activations came from (each manifest's source): an SAE or a
// transcoder trained from caches only records it as one trained from text does (cfg.json's metadata:
// hook_name, and a transcoder's hook_name_out when its target cache is of the same model, windows and
// BOS), and the BOS handling its windows had (bos_activations). A crosscoder's sources are not named.
void describe_cache_origin(const TrainConfig& config, const std::vector<std::string>& reads, Json& description) {
  for (const std::string& read : reads)
    if (!is_activation_cache(read)) return;
  const DictionaryReads kind = dictionary_reads(config);
  if (kind.text || kind.in.size() != 1) return;
  const Json in = read_cache_manifest(kind.in[0]).source;
  Json saelens = cache_saelens_metadata(in);
  if (!saelens.has("hook_name")) return;
  if (kind.kind == DictionaryKind::Transcoder) {
    if (kind.out.size() != 1) return;
    const Json out = read_cache_manifest(kind.out[0]).source;
    for (const char* key : {"model", "context_size", "bos_id", "text", "text_field"})
      if (in.has(key) != out.has(key) || (in.has(key) && in.at(key) != out.at(key))) return;
    saelens["hook_name_out"] = out.at("hook_name");
  } else if (kind.kind != DictionaryKind::Sae) {
    return;
  }
  description["saelens_metadata"] = saelens;
  if (in.has("bos_activations")) description["bos_activations"] = in.at("bos_activations");
}

}  // namespace

TrainingData open_training_data(const TrainConfig& config, const std::vector<std::string>& reads, Device device,
                                const std::optional<DatasetScales>& saved) {
  if (reads.empty()) throw Error("open_training_data: nothing to read");
  if (saved && saved->per_block.size() != reads.size())
    throw DataError(cat("resume: ", saved->per_block.size(), " dataset scales saved for ", reads.size(), " activations"));
  TrainingData data;
  if (config.data == "text") {
    data = open_text(config, reads, device, saved);
  } else {
    if (reads.size() == 1) {
      data.activations = open_activations(reads[0], config.synthetic);
    } else {
      std::vector<std::unique_ptr<ActivationSource>> sources;
      for (const std::string& read : reads) sources.push_back(open_activations(read, config.synthetic));
      data.activations = std::make_unique<ConcatSource>(std::move(sources));
    }
    data.synthetic = dynamic_cast<const SyntheticSource*>(data.activations.get());
    data.widths = data.activations->block_widths();
    data.dataset_scale = saved ? *saved
                               : (config.normalize == Normalization::Dataset
                                      ? estimate_dataset_scales(*data.activations)
                                      : DatasetScales(std::vector<double>(reads.size(), 1.0)));
    data.mean_squared_norms = nominal_mean_squared_norms(data.widths, config.normalize);
    if (config.normalize == Normalization::None && config.target_l0 > 0)  // raw inputs: their own mean ||x||^2
      estimate_dataset_scales(*data.activations, 65536, &data.mean_squared_norms);
    // After the estimates: a Batcher in token mode tells the files its reads are scattered, which
    // an estimate's sequential read would undo.
    data.batches = std::make_unique<Batcher>(*data.activations, config.batch_tokens, config.normalize,
                                             data.dataset_scale, config.seed);
    data.description = data.activations->describe();
    describe_cache_origin(config, reads, data.description);
  }
  data.reads = reads;
  for (int64_t w : data.widths) {
    data.offsets.push_back(data.d);
    data.d += w;
  }
  if (reads.size() > 1) {
    Json names = Json::array();
    for (const std::string& r : reads) names.push_back(Json(r));
    data.description["reads"] = names;
  }
  return data;
}

namespace {
void gather_blocks(const TrainingData& data, const std::vector<size_t>& blocks, const float* rows, int64_t n,
                   int64_t width, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    float* to = out + r * width;
    for (size_t b : blocks) {
      std::copy_n(rows + r * data.d + data.offsets[b], data.widths[b], to);
      to += data.widths[b];
    }
  }
}
}  // namespace

void RunColumns::gather_input(const TrainingData& data, const float* rows, int64_t n, float* x) const {
  gather_blocks(data, in, rows, n, d_in, x);
}

void RunColumns::gather_target(const TrainingData& data, const float* rows, int64_t n, float* target) const {
  gather_blocks(data, out, rows, n, d_out, target);
}

RawMoments RunColumns::raw_moments(const BatchStats& stats) const {
  if (stats.blocks.empty()) return RawMoments{0, stats.raw_mean, 0, stats.raw_std};
  std::vector<RawMoments> own;
  for (size_t b : in) own.push_back(stats.blocks.at(b));
  if (!target_is_input)
    for (size_t b : out) own.push_back(stats.blocks.at(b));
  return combine_moments(own);
}

DatasetScales RunColumns::scales(const TrainingData& data) const {
  std::vector<double> s;
  for (size_t b : in) s.push_back(data.dataset_scale.per_block[b]);
  if (!target_is_input)
    for (size_t b : out) s.push_back(data.dataset_scale.per_block[b]);
  return DatasetScales(std::move(s));
}

double RunColumns::input_mean_squared_norm(const TrainingData& data) const {
  double sum = 0;
  for (size_t b : in) sum += data.mean_squared_norms.at(b);
  return sum;
}

RunColumns run_columns(const TrainingData& data, const std::vector<std::string>& in, const std::vector<std::string>& out) {
  RunColumns c;
  for (const std::string& r : in) {
    c.in.push_back(data.block(r));
    c.d_in += data.widths[c.in.back()];
  }
  for (const std::string& r : out) {
    c.out.push_back(data.block(r));
    c.d_out += data.widths[c.out.back()];
  }
  c.target_is_input = c.in == c.out;
  c.whole_row = c.d_in == data.d;
  for (size_t k = 0; c.whole_row && k < c.in.size(); ++k) c.whole_row = c.in[k] == k;
  return c;
}

std::vector<std::string> own_reads(const TrainConfig& config) {
  const DictionaryReads r = dictionary_reads(config);
  std::vector<std::string> reads = r.in;
  for (const std::string& o : r.out)
    if (std::find(reads.begin(), reads.end(), o) == reads.end()) reads.push_back(o);
  return reads;
}

TrainingData open_training_data(const TrainConfig& config, Device device, const std::optional<DatasetScales>& saved) {
  return open_training_data(config, own_reads(config), device, saved);
}

}  // namespace sae
