// load_sae_at_layer, reconstruct and decoder_direction (see sae_at_layer.h). T tokens, D width, F features.
#include "sae/eval/sae_at_layer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "lm/model_loader.h"
#include "sae/arch/registry.h"
#include "sae/train/checkpoint.h"
#include "sae/train/dictionary_reads.h"
#include "tensor/ops.h"

namespace sae {

std::string spliced_site_text(const SaeAtLayer& sae) {
  const std::string name = hook_name(sae.site);
  if (sae.layer < 0 || name.rfind("hidden_states", 0) == 0) return name;
  return cat(name, " = hidden_states[", sae.layer, "]");
}

void refuse_one_head(const Json& cfg) {
  for (const Json* holder : {cfg.has("metadata") && cfg.at("metadata").is_object() ? &cfg.at("metadata") : nullptr, &cfg})
    if (holder && holder->has("hook_head_index") && !holder->at("hook_head_index").is_null())
      throw DataError(cat("hook_head_index ", holder->at("hook_head_index").dump(),
                          " is not supported (an SAE of one attention head reads a slice of hook_z; we read and "
                          "splice whole hook points)"));
}

bool hook_site_from_cfg(const Json& cfg, HookSite& site, std::string& source) {
  refuse_one_head(cfg);
  for (const Json* holder : {cfg.has("metadata") && cfg.at("metadata").is_object() ? &cfg.at("metadata") : nullptr, &cfg}) {
    if (holder && holder->has("hook_name") && !holder->at("hook_name").is_null() && !holder->at("hook_name").is_string())
      throw DataError(cat("hook_name: expected a hook point's name, got ", holder->at("hook_name").dump()));
    if (holder && holder->has("hook_name") && holder->at("hook_name").is_string()) {
      const std::string name = holder->at("hook_name").as_string();
      // Messages and reports give the name beside it. dictionary_learning's comes from its
      // config.json's submodule_name (sae/train/dictionary_learning_file.h).
      source = cfg.has("dictionary_learning") ? "config.json trainer.submodule_name" : "cfg.json hook_name";
      site = parse_hook_name(name, source);
      return true;
    }
  }
  if (cfg.has("sae_cpp") && cfg.at("sae_cpp").is_object()) {
    const Json& ours = cfg.at("sae_cpp");
    if (ours.has("data") && ours.at("data").is_object() && ours.at("data").has("layer")) {
      source = "cfg.json sae_cpp.data.layer";
      site = HookSite{ours.at("data").at("layer").as_int(), HookPoint::FinalOutput};  // hidden_states[layer]
      return true;
    }
  }
  return false;
}

std::string no_hook_point_message(const std::string& dir, bool npz, bool transcoder) {
  if (transcoder)  // --hook cannot say it (refuse_hook_choice): the input and the output go together
    return cat(dir, ": a transcoder whose cfg.json names no hook points (metadata.hook_name, the input it reads, and "
               "hook_name_out, the output it replaces; --hook cannot place the two) cannot be read inside a model: "
               "sae_apply applies it to activations (one trained on activation files: name its hooks there; "
               "sparsify's read their module's input, e.g. the MLP's after its norm's weights, not one of our hook "
               "points)");
  if (npz)
    return cat(dir, ": a Gemma Scope params.npz does not say where the SAE reads: give --hook (Gemma Scope's "
               "gemma-scope-2b-pt-res layer_L SAEs read blocks.L.hook_resid_post, -mlp- ones blocks.L.hook_mlp_out, -att- "
               "ones blocks.L.attn.hook_z)");
  return cat(dir, " does not say where the SAE reads (no hook_name, no sae_cpp.data.layer; for dictionary_learning's, "
                  "no trainer.submodule_name of the form resid_post_layer_N): give --hook or --layer");
}

namespace {

// A SAELens key that must be absent, null or `allowed`.
void require_key(const Json& cfg, const std::string& key, const std::string& allowed, const std::string& where,
                 const std::string& why) {
  if (!cfg.has(key) || cfg.at(key).is_null()) return;
  if (!allowed.empty() && cfg.at(key).is_string() && cfg.at(key).as_string() == allowed) return;
  throw DataError(cat(where, ": ", key, " ", cfg.at(key).dump(), " is not supported (", why, ")"));
}

void read_window_metadata(SaeAtLayer& s) {
  const WindowMetadata w = window_metadata(s.cfg, s.dir);
  s.prepend_bos = w.prepend_bos;
  s.context_size = w.context_size;
}

// A crosscoder's sources from metadata.crosscoder_hooks, resolved against their models, with their
// dataset scales (see load_sae_at_layer).
void fit_crosscoder(SaeAtLayer& s, const DecoderConfig& model, const DecoderConfig* model_b, const std::string& where) {
  const int64_t count = s.params.sources, width = s.params.d_in() / count;
  const Json* meta = s.cfg.has("metadata") && s.cfg.at("metadata").is_object() ? &s.cfg.at("metadata") : nullptr;
  if (!meta || !meta->has("crosscoder_hooks") || !meta->at("crosscoder_hooks").is_array())
    throw DataError(cat(where, ": a crosscoder without metadata.crosscoder_hooks: it does not say which hooks it reads "
                               "(a crosscoder trained on activation files is evaluated with sae_apply)"));
  const std::vector<Json>& hooks = meta->at("crosscoder_hooks").elements();
  if (static_cast<int64_t>(hooks.size()) != count)
    throw DataError(cat(where, ": metadata.crosscoder_hooks names ", hooks.size(), " hooks for ", count, " sources"));
  InputNormalization normalization;
  try {
    normalization = trained_normalization(s.cfg, where);
  } catch (const Error& e) {
    throw DataError(e.what());
  }
  if (normalization.kind == Normalization::Story || per_token(normalization.kind))
    throw DataError(cat(where, per_token(normalization.kind)
                                   ? cat(": a crosscoder normalised per token (normalize_activations \"",
                                         normalization_name(normalization.kind), "\") is not read")
                                   : ": a crosscoder normalised per story cannot be spliced (each source is scaled on "
                                     "its own)"));
  if (normalization.kind == Normalization::Dataset && static_cast<int64_t>(normalization.scales.per_block.size()) != count)
    throw DataError(cat(where, ": sae_cpp.dataset_scale holds ", normalization.scales.per_block.size(), " scales for ",
                        count, " sources"));
  s.normalization = normalization.kind;
  s.dataset_scale = s.output_scale = normalization.scales.first();
  for (int64_t k = 0; k < count; ++k) {
    if (!hooks[k].is_string()) throw DataError(cat(where, ": metadata.crosscoder_hooks[", k, "] is not a string"));
    CrosscoderSource source;
    source.read = hooks[k].as_string();
    if (normalization.kind == Normalization::Dataset) source.scale = normalization.scales.per_block[k];
    TextReadName read;
    try {
      read = parse_text_read(source.read);
    } catch (const Error& e) {
      throw DataError(cat(where, ": metadata.crosscoder_hooks: ", e.what()));
    }
    source.model = read.model;
    if (read.model == 1 && !model_b)
      throw UsageError(cat(s.dir, " is a crosscoder over two models (it reads ", source.read, "): give --model-b"));
    const DecoderConfig& owner = read.model == 1 ? *model_b : model;
    try {
      source.site = resolve_hook_site(owner, read.site, "cfg.json crosscoder_hooks");
    } catch (const UsageError& e) {
      throw DataError(cat(s.dir, ": ", e.what()));
    }
    if (owner.hook_width(source.site) != width)
      throw DataError(cat(s.dir, ": the crosscoder's sources are ", width, " wide (d_in ", s.params.d_in(), " / ", count,
                          ") but ", source.read, " of ", owner.source, " is ", owner.hook_width(source.site), " wide"));
    for (const CrosscoderSource& other : s.sources)
      if (other.model == source.model && other.site == source.site)
        throw DataError(cat(where, ": metadata.crosscoder_hooks reads ", source.read, " twice"));
    s.sources.push_back(source);
  }
  if (s.sources[0].model != 0)
    throw DataError(cat(where, ": metadata.crosscoder_hooks must start with a hook of the model (a crosscoder over two "
                               "models reads the same hooks of both)"));
  if (model_b && !s.reads_model_b())
    throw UsageError(cat("--model-b: ", s.dir, " reads hooks of one model only"));
  s.site = s.input_site = s.sources[0].site;
  s.layer_source = "cfg.json metadata.crosscoder_hooks";
  s.layer = s.sources[0].model == 0 ? static_cast<int>(hidden_states_index(s.site, model.num_layers)) : -1;
}

}  // namespace

void refuse_hook_choice(const SaeParams& params, const HookChoice& choice) {
  if (params.sources > 1 && choice.given())
    throw UsageError(cat(choice.option, ": a crosscoder's hooks are those its cfg.json names "
                         "(metadata.crosscoder_hooks)"));
  if (params.transcoder && choice.given())
    throw UsageError(cat(choice.option, ": a transcoder's hooks are those its cfg.json names (metadata.hook_name, "
                         "the input it reads; metadata.hook_name_out, the output it replaces)"));
}

SaeAtLayer load_sae_at_layer(const std::string& dir, const DecoderConfig& model, const HookChoice& choice,
                             Device device, const DecoderConfig* model_b) {
  SaeAtLayer s;
  s.dir = dir;
  Checkpoint checkpoint = load_checkpoint(dir, device, /*with_state=*/false);
  s.params = std::move(checkpoint.params);
  const bool npz = !checkpoint.npz.empty();
  s.cfg = std::move(checkpoint.cfg);
  const std::string where = dir + "/cfg.json";
  refuse_hook_choice(s.params, choice);
  if (s.params.sources == 1 && model_b)
    throw UsageError(cat("--model-b: ", dir, " is not a crosscoder (a second model is read by a crosscoder over two "
                         "models only)"));
  try {
    refuse_one_head(s.cfg);
  } catch (const Error& e) {
    throw DataError(cat(where, ": ", e.what()));
  }

  if (s.params.sources > 1) {
    fit_crosscoder(s, model, model_b, where);
    read_window_metadata(s);
    return s;
  }
  HookSite named;
  bool found = false;
  try {
    if (choice.given()) {
      named = choice.site;
      s.layer_source = choice.option;
      found = true;
    } else {
      found = hook_site_from_cfg(s.cfg, named, s.layer_source);
    }
  } catch (const Error& e) {
    throw DataError(cat(where, ": ", e.what()));
  }
  const InputNormalization trained = trained_normalization(s.cfg, where);  // its DataErrors name `where`
  s.normalization = trained.kind;
  // A dataset-normalised transcoder has two scales, its input's and its target's; an SAE one.
  const size_t scales_wanted = s.params.transcoder ? 2 : 1;
  if (trained.kind == Normalization::Dataset && trained.scales.per_block.size() != scales_wanted)
    throw DataError(cat(where, ": sae_cpp.dataset_scale has ", trained.scales.per_block.size(), " scales but a",
                        s.params.transcoder ? " transcoder has 2 (its input's and its target's)" : "n SAE has 1"));
  s.dataset_scale = trained.scales.first();
  s.output_scale = trained.scales.per_block.back();
  s.kept_bos = trained.with_bos_rows;
  if (!found) throw UsageError(no_hook_point_message(dir, npz, s.params.transcoder));
  try {
    s.site = resolve_hook_site(model, named, choice.given() ? choice.option : s.layer_source);
  } catch (const UsageError& e) {
    if (choice.given()) throw;
    throw DataError(cat(dir, ": ", e.what()));
  }
  s.input_site = s.site;
  if (s.params.transcoder) {
    if (s.normalization == Normalization::Story)  // training refuses it: its target would have no scale
      throw DataError(cat(where, ": sae_cpp.normalization says \"story\", which a transcoder cannot have (its input and "
                                 "target are each scaled by a dataset scale, or not at all)"));
    const Json* meta = s.cfg.has("metadata") && s.cfg.at("metadata").is_object() ? &s.cfg.at("metadata") : nullptr;
    if (!meta || !meta->has("hook_name_out") || !meta->at("hook_name_out").is_string())
      throw DataError(cat(where, ": a transcoder without metadata.hook_name_out: it does not say which hook it "
                                 "replaces (a transcoder trained on activation files is evaluated with sae_apply)"));
    try {
      s.site = resolve_hook_site(model, parse_hook_name(meta->at("hook_name_out").as_string(), "cfg.json hook_name_out"),
                                 "cfg.json hook_name_out");
      s.layer_source = "cfg.json metadata.hook_name_out";  // where `site`, the hook it replaces, came from
    } catch (const UsageError& e) {
      throw DataError(cat(dir, ": ", e.what()));
    }
    if (!reached_before(s.input_site, s.site, model.residual == ResidualWiring::Parallel))
      throw DataError(cat(dir, ": the transcoder reads ", hook_name(s.input_site), ", which the model reaches only after ",
                          hook_name(s.site), ", the hook it replaces"));
    if (s.params.d_out() != model.hook_width(s.site))
      throw DataError(cat(dir, ": the transcoder's d_out is ", s.params.d_out(), " but ", hook_name(s.site),
                          " of the model (", model.source, ") is ", model.hook_width(s.site), " wide"));
  } else {
    s.output_scale = s.dataset_scale;
  }
  s.layer = static_cast<int>(hidden_states_index(s.site, model.num_layers));
  const bool flattened_z = s.site.point == HookPoint::AttnZ && s.cfg.has("reshape_activations") &&
                           s.cfg.at("reshape_activations") == Json("hook_z");
  if (!flattened_z)
    require_key(s.cfg, "reshape_activations", "none", where,
                "only \"none\", or \"hook_z\" for an SAE at attn.hook_z (its heads flattened, as ours are)");
  const int64_t width = model.hook_width(s.input_site);
  if (s.params.d_in() != width)
    throw DataError(cat(dir, ": the SAE's d_in is ", s.params.d_in(), " but ", hook_name(s.input_site), " of the model (",
                        model.source, ") is ", width, " wide (the model's hidden size is ", model.hidden_size, ")"));
  if (s.normalization == Normalization::Dataset && !(s.dataset_scale > 0 && std::isfinite(s.dataset_scale)))
    throw DataError(cat(where, ": sae_cpp.dataset_scale must be a positive number, got ", s.dataset_scale));
  read_window_metadata(s);
  return s;
}

bool SaeAtLayer::reads_model_b() const {
  for (const CrosscoderSource& source : sources)
    if (source.model == 1) return true;
  return false;
}

WindowMetadata window_metadata(const Json& cfg, const std::string& dir) {
  WindowMetadata w;
  if (!cfg.has("metadata") || !cfg.at("metadata").is_object()) return w;
  const Json& m = cfg.at("metadata");
  if (m.has("prepend_bos") && !m.at("prepend_bos").is_null()) {
    if (!m.at("prepend_bos").is_bool())
      throw DataError(cat(dir, "/cfg.json: metadata.prepend_bos must be true or false, got ", m.at("prepend_bos").dump()));
    w.prepend_bos = m.at("prepend_bos").as_bool() ? 1 : 0;
  }
  if (m.has("context_size") && !m.at("context_size").is_null()) {
    const Json& c = m.at("context_size");
    if (!c.is_number() || c.as_number() < 1 || c.as_number() > double(int64_t(1) << 24) ||
        c.as_number() != std::floor(c.as_number()))
      throw DataError(cat(dir, "/cfg.json: metadata.context_size must be a whole number of positions >= 1, got ",
                          c.dump()));
    w.context_size = c.as_int();
  }
  return w;
}

int32_t bos_for_sae(BosMode mode, int prepend_bos, const BpeTokenizer& tokenizer) {
  if (mode == BosMode::Auto && prepend_bos >= 0) mode = prepend_bos ? BosMode::On : BosMode::Off;
  return resolve_bos(mode, tokenizer);
}

int32_t bos_for_sae(BosMode mode, const SaeAtLayer& sae, const BpeTokenizer& tokenizer) {
  return bos_for_sae(mode, sae.prepend_bos, tokenizer);
}

namespace {
// x_hat's rows = decode(encode(input's rows)) (skip_input: a skip transcoder's x), a block of
// encode_block_rows(params, block_rows) rows at a time, each block's features handed to `features`.
void decode_in_blocks(const SaeParams& params, const Tensor& input, const Tensor& skip_input, Tensor& x_hat,
                      const FeatureBlock& features, int64_t block_rows) {
  const int64_t t = input.size(0), block = encode_block_rows(params, block_rows);
  for (int64_t first = 0; first < t; first += block) {
    const int64_t end = std::min(t, first + block);
    const Tensor f = sae_encode(params, input.slice_rows(first, end));
    const Tensor skip_rows = skip_input.slice_rows(first, end);
    Tensor rows = x_hat.slice_rows(first, end);
    copy_(rows, sae_decode(params, f, &skip_rows).to(x_hat.device()));
    if (features) features(first, f);
  }
}
}  // namespace

Tensor reconstruct(const SaeAtLayer& sae, const Tensor& x, const FeatureBlock& features, int64_t block_rows) {
  if (sae.params.sources > 1) throw Error("reconstruct: a crosscoder reconstructs its sources (reconstruct_sources)");
  const int64_t t = x.size(0), d = x.size(1);
  const Tensor raw = x.to(Device::CPU);
  Tensor normalized = Tensor::empty(Shape{t, d});
  const BatchStats stats =
      normalize_batch(raw.data<float>(), normalized.data<float>(), t, d, sae.normalization, sae.dataset_scale,
                      [](int64_t row) { return row; }, hook_name(sae.site));
  const Tensor input = normalized.to(sae.params.device());
  // A transcoder normalised per token (SAELens's): its output as decoded, a skip term on the raw input.
  const bool output_as_decoded = sae.params.transcoder && per_token(sae.normalization);
  const Tensor skip_input = output_as_decoded ? raw.to(sae.params.device()) : input;
  Tensor x_hat = Tensor::empty(Shape{t, sae.params.d_out()}, DType::F32, sae.params.device());
  decode_in_blocks(sae.params, input, skip_input, x_hat, features, block_rows);
  // x = x_n / scale + shift (a transcoder: its target's scale, no shift, and none when per token; an
  // SAE per token: each row's own)
  if (per_token(sae.normalization) && !sae.params.transcoder) {
    const Tensor host = x_hat.to(Device::CPU);
    Tensor back = Tensor::empty(Shape{t, d});
    denormalize_blocks(host.data<float>(), back.data<float>(), t, {d}, sae.normalization, DatasetScales(), stats);
    x_hat = back.to(x_hat.device());
  } else if (sae.params.transcoder)
    affine_(x_hat, x_hat, sae.normalization == Normalization::Dataset ? 1.0 / sae.output_scale : 1.0, 0.0);
  else
    affine_(x_hat, x_hat, 1.0 / stats.norm_scale, stats.norm_shift);
  return x_hat;
}

std::vector<Tensor> reconstruct_sources(const SaeAtLayer& sae, const std::vector<Tensor>& x, const FeatureBlock& features,
                                        int64_t block_rows) {
  const int64_t count = static_cast<int64_t>(sae.sources.size());
  if (count < 2 || static_cast<int64_t>(x.size()) != count)
    throw Error(cat("reconstruct_sources: ", x.size(), " activations for a dictionary of ", count, " sources"));
  const int64_t t = x[0].size(0), d = sae.params.d_in() / count;
  std::vector<int64_t> widths;
  DatasetScales scales(std::vector<double>{});
  Tensor raw = Tensor::empty(Shape{t, count * d});
  float* row = raw.data<float>();
  for (int64_t k = 0; k < count; ++k) {
    if (x[k].ndim() != 2 || x[k].size(0) != t || x[k].size(1) != d)
      throw Error(cat("reconstruct_sources: source ", k, " is ", x[k].describe(), ", expected [", t, ", ", d, "]"));
    const Tensor host = x[k].to(Device::CPU);
    const float* src = host.data<float>();
    for (int64_t r = 0; r < t; ++r) std::copy_n(src + r * d, d, row + r * count * d + k * d);
    widths.push_back(d);
    scales.per_block.push_back(sae.sources[k].scale);
  }
  Tensor normalized = Tensor::empty(Shape{t, count * d});
  const BatchStats stats = normalize_blocks(raw.data<float>(), normalized.data<float>(), t, widths, sae.normalization,
                                            scales, [](int64_t r) { return r; }, cat(sae.dir, " sources"));
  const Tensor input = normalized.to(sae.params.device());
  Tensor x_hat = Tensor::empty(Shape{t, count * d});
  decode_in_blocks(sae.params, input, input, x_hat, features, block_rows);
  Tensor x_hat_raw = Tensor::empty(Shape{t, count * d});
  denormalize_blocks(x_hat.data<float>(), x_hat_raw.data<float>(), t, widths, sae.normalization, scales, stats);
  std::vector<Tensor> out;
  for (int64_t k = 0; k < count; ++k) {
    Tensor block = Tensor::empty(Shape{t, d});
    const float* src = x_hat_raw.data<float>();
    float* dst = block.data<float>();
    for (int64_t r = 0; r < t; ++r) std::copy_n(src + r * count * d + k * d, d, dst + r * d);
    out.push_back(block.to(sae.params.device()));
  }
  return out;
}

bool is_crosscoder_folder(const std::string& dir) {
  try {
    const Json cfg = read_json_file(dir + "/cfg.json");
    return cfg.is_object() && cfg.has("architecture") && cfg.at("architecture") == Json("crosscoder");
  } catch (const Error&) {
    return false;
  }
}

namespace {
std::vector<double> decoder_row(const SaeAtLayer& sae, int64_t feature) {
  const int64_t features = sae.params.d_sae();
  if (feature < 0 || feature >= features)
    throw UsageError(cat("--feature ", feature, " is outside 0..", features - 1, " (the SAE has ", features,
                         " features)"));
  return sae.params.W_dec.slice_rows(feature, feature + 1).to(Device::CPU).to_vector();
}

double norm_of(const std::vector<double>& row) {
  double squares = 0;  // of float32 values: no overflow in double
  for (double v : row) squares += v * v;
  return std::sqrt(squares);
}
}  // namespace

double decoder_row_norm(const SaeAtLayer& sae, int64_t feature) { return norm_of(decoder_row(sae, feature)); }

Tensor decoder_direction(const SaeAtLayer& sae, int64_t feature) {
  if (sae.crosscoder())
    throw UsageError(cat(sae.dir, " is a crosscoder: its decoder rows span its sources, and steering at each of its "
                         "hooks is not done (sae_steer takes SAEs and transcoders)"));
  // In double on the host: a float32 norm overflows for weights above ~1e19 (a norm of inf would
  // make the direction 0, and the "steered" text the unsteered one).
  const std::vector<double> row = decoder_row(sae, feature);
  const double norm = norm_of(row);
  if (!std::isfinite(norm))
    throw DataError(cat(sae.dir, ": feature ", feature, "'s decoder row holds a value that is not finite"));
  if (!(norm > 0)) throw DataError(cat(sae.dir, ": feature ", feature, " has a zero decoder row: no direction to steer along"));
  std::vector<double> direction(row.size());
  for (size_t j = 0; j < row.size(); ++j) direction[j] = row[j] / norm;
  return Tensor::from_vector(direction, Shape{static_cast<int64_t>(row.size())}, DType::F32, sae.params.device());
}

}  // namespace sae
