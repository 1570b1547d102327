// GPT-Neo (TinyStories-33M and its kin) as a family of the decoder model (lm/decoder_model.h):
// the config.json rules of docs/gpt_neo.md section 1, the table of its file's tensors, and GptNeo,
// the decoder model with GPT-Neo's own config kept beside it. What differs from the other families:
// learned positions, no 1/sqrt(hd) scaling of the scores, local layers attending to exactly
// window_size keys, q/k/v without biases (stacked into one weight at load), gelu_new, tied
// unembedding. docs/gpt_neo.md is the specification.
#include "lm/gpt_neo.h"

#include <cmath>

#include "lm/config_rules.h"
#include "lm/model_loader.h"

namespace sae {

namespace {

AttentionKind attention_kind(const Json& value, const std::string& where, const std::string& source) {
  if (value.is_string() && value.as_string() == "global") return AttentionKind::Global;
  if (value.is_string() && value.as_string() == "local") return AttentionKind::Local;
  throw DataError(cat(source, ": ", where, ": attention type ", value.dump(), " is not \"global\" or \"local\""));
}

// attention_types [[[kind, ...], repeat], ...]: each entry's kinds repeated `repeat` times, in order.
std::vector<AttentionKind> expand_attention_types(const Json& types, const std::string& source) {
  const std::string shape_hint = "'attention_types' must be [[[\"global\"|\"local\", ...], count], ...]";
  if (!types.is_array()) throw DataError(cat(source, ": ", shape_hint, ", got ", types.dump()));
  std::vector<AttentionKind> layers;
  for (const Json& entry : types.elements()) {
    if (!entry.is_array() || entry.size() != 2 || !entry.at(size_t(0)).is_array())
      throw DataError(cat(source, ": ", shape_hint, "; entry ", entry.dump(), " is not"));
    const Json& repeat = entry.at(size_t(1));
    if (!repeat.is_number() || repeat.as_number() < 0 || repeat.as_number() != std::floor(repeat.as_number()) ||
        repeat.as_number() > static_cast<double>(kMaxModelLayers))
      throw DataError(cat(source, ": 'attention_types': bad repeat count ", repeat.dump()));
    std::vector<AttentionKind> kinds;
    for (const Json& kind : entry.at(size_t(0)).elements())
      kinds.push_back(attention_kind(kind, "'attention_types'", source));
    for (int64_t r = 0; r < static_cast<int64_t>(repeat.as_number()); ++r) {
      layers.insert(layers.end(), kinds.begin(), kinds.end());
      if (static_cast<int64_t>(layers.size()) > kMaxModelLayers)
        throw DataError(cat(source, ": 'attention_types' gives more than ", kMaxModelLayers, " layers"));
    }
  }
  return layers;
}

bool is_rotary_or_other_position_scheme(const std::string& key) {
  return key.rfind("rope", 0) == 0 || key.find("rotary") != std::string::npos || key.rfind("alibi", 0) == 0;
}

// Hugging Face's names (after the "transformer." prefix) for each of our parameters.
std::vector<WeightRule> gpt_neo_rules(const DecoderConfig&) {
  const std::string b = "h.{i}.", a = "h.{i}.attn.attention.";
  return {
      {"embed.tokens", {"wte.weight"}},
      {"embed.positions", {"wpe.weight"}},
      {"blocks.{i}.ln1.weight", {b + "ln_1.weight"}},
      {"blocks.{i}.ln1.bias", {b + "ln_1.bias"}},
      {"blocks.{i}.attn.qkv.weight", {a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"},
       WeightTransform::StackRows},
      {"blocks.{i}.attn.out.weight", {a + "out_proj.weight"}},
      {"blocks.{i}.attn.out.bias", {a + "out_proj.bias"}},
      {"blocks.{i}.ln2.weight", {b + "ln_2.weight"}},
      {"blocks.{i}.ln2.bias", {b + "ln_2.bias"}},
      {"blocks.{i}.mlp.in.weight", {b + "mlp.c_fc.weight"}},
      {"blocks.{i}.mlp.in.bias", {b + "mlp.c_fc.bias"}},
      {"blocks.{i}.mlp.out.weight", {b + "mlp.c_proj.weight"}},
      {"blocks.{i}.mlp.out.bias", {b + "mlp.c_proj.bias"}},
      {"final_norm.weight", {"ln_f.weight"}},
      {"final_norm.bias", {"ln_f.bias"}},
  };
}

// h.{i}.attn.attention.bias or .masked_bias with i < layers: the mask buffers older transformers
// versions saved; Hugging Face ignores them and so do we.
bool gpt_neo_ignored(const std::string& name, int64_t layers) {
  return is_block_buffer(name, "h.", {".attn.attention.bias", ".attn.attention.masked_bias"}, layers);
}

DecoderConfig parse_gpt_neo(const Json& json, const std::string& source) {
  return GptNeoConfig::from_json(json, source).to_decoder();
}

}  // namespace

GptNeoConfig GptNeoConfig::from_json(const Json& json, const std::string& source) {
  if (!json.is_object()) throw DataError(cat(source, ": expected a JSON object, got a ", json.type_name()));
  GptNeoConfig c;
  c.source = source;
  if (!json.has("model_type") || !json.at("model_type").is_string() || json.at("model_type").as_string() != "gpt_neo")
    throw DataError(cat(source, ": 'model_type' must be \"gpt_neo\", got ",
                        json.has("model_type") ? json.at("model_type").dump() : "nothing"));
  if (json.has("activation_function") &&
      !(json.at("activation_function").is_string() && json.at("activation_function").as_string() == "gelu_new"))
    throw DataError(cat(source, ": 'activation_function' ", json.at("activation_function").dump(),
                        " is not supported (only \"gelu_new\")"));
  for (const auto& [key, value] : json.items())
    if (is_rotary_or_other_position_scheme(key))
      throw DataError(cat(source, ": key '", key, "' asks for a position scheme GPT-Neo does not have"));

  c.vocab_size = positive_int(json, "vocab_size", source);
  c.hidden_size = positive_int(json, "hidden_size", source);
  c.num_layers = aliased_int(json, "num_layers", "num_hidden_layers", source);
  c.num_heads = aliased_int(json, "num_heads", "num_attention_heads", source);
  if (!json.has("max_position_embeddings")) throw DataError(cat(source, ": missing 'max_position_embeddings'"));
  c.max_positions = positive_int(json, "max_position_embeddings", source);
  if (c.num_layers > kMaxModelLayers) throw DataError(cat(source, ": 'num_layers' ", c.num_layers, " is above ", kMaxModelLayers));
  if (c.hidden_size % c.num_heads != 0)
    throw DataError(cat(source, ": 'hidden_size' ", c.hidden_size, " is not divisible by 'num_heads' ", c.num_heads));
  if (json.has("window_size")) c.window_size = positive_int(json, "window_size", source);
  c.intermediate_size = 4 * c.hidden_size;
  if (json.has("intermediate_size") && !json.at("intermediate_size").is_null())
    c.intermediate_size = positive_int(json, "intermediate_size", source);
  if (json.has("layer_norm_epsilon")) {
    const Json& eps = json.at("layer_norm_epsilon");
    if (!eps.is_number() || !(eps.as_number() > 0) || std::isinf(eps.as_number()))
      throw DataError(cat(source, ": 'layer_norm_epsilon' must be a positive number, got ", eps.dump()));
    c.layer_norm_epsilon = eps.as_number();
  }
  if (json.has("tie_word_embeddings")) {
    if (!json.at("tie_word_embeddings").is_bool())
      throw DataError(cat(source, ": 'tie_word_embeddings' must be true or false, got ",
                          json.at("tie_word_embeddings").dump()));
    c.tie_word_embeddings = json.at("tie_word_embeddings").as_bool();
  }

  // attention_types, expanded; attention_layers (what save_pretrained also writes) must agree.
  const bool has_types = json.has("attention_types") && !json.at("attention_types").is_null();
  const bool has_layers = json.has("attention_layers") && !json.at("attention_layers").is_null();
  if (!has_types && !has_layers) throw DataError(cat(source, ": neither 'attention_types' nor 'attention_layers'"));
  std::vector<AttentionKind> saved;
  if (has_layers) {
    const Json& layers = json.at("attention_layers");
    if (!layers.is_array())
      throw DataError(cat(source, ": 'attention_layers' must be a list of \"global\"/\"local\", got ", layers.dump()));
    for (const Json& kind : layers.elements()) saved.push_back(attention_kind(kind, "'attention_layers'", source));
  }
  c.attention_layers = has_types ? expand_attention_types(json.at("attention_types"), source) : saved;
  if (static_cast<int64_t>(c.attention_layers.size()) != c.num_layers)
    throw DataError(cat(source, ": the attention types give ", c.attention_layers.size(), " layers, 'num_layers' is ",
                        c.num_layers));
  if (has_types && has_layers && saved != c.attention_layers)
    throw DataError(cat(source, ": 'attention_layers' disagrees with the expansion of 'attention_types' (Hugging Face "
                        "would silently use 'attention_layers'; fix the file)"));
  return c;
}

GptNeoConfig GptNeoConfig::load(const std::string& path) { return from_json(read_json_file(path), path); }

std::vector<std::pair<std::string, std::vector<int64_t>>> GptNeoConfig::parameter_shapes() const {
  const int64_t d = hidden_size, f = intermediate_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"transformer.wte.weight", {vocab_size, d}}, {"transformer.wpe.weight", {max_positions, d}}};
  for (int64_t i = 0; i < num_layers; ++i) {
    const std::string b = cat("transformer.h.", i, ".");
    const std::vector<std::pair<std::string, std::vector<int64_t>>> block = {
        {b + "ln_1.weight", {d}},
        {b + "ln_1.bias", {d}},
        {b + "attn.attention.q_proj.weight", {d, d}},
        {b + "attn.attention.k_proj.weight", {d, d}},
        {b + "attn.attention.v_proj.weight", {d, d}},
        {b + "attn.attention.out_proj.weight", {d, d}},
        {b + "attn.attention.out_proj.bias", {d}},
        {b + "ln_2.weight", {d}},
        {b + "ln_2.bias", {d}},
        {b + "mlp.c_fc.weight", {f, d}},
        {b + "mlp.c_fc.bias", {f}},
        {b + "mlp.c_proj.weight", {d, f}},
        {b + "mlp.c_proj.bias", {d}}};
    shapes.insert(shapes.end(), block.begin(), block.end());
  }
  shapes.push_back({"transformer.ln_f.weight", {d}});
  shapes.push_back({"transformer.ln_f.bias", {d}});
  if (!tie_word_embeddings) shapes.push_back({"lm_head.weight", {vocab_size, d}});
  return shapes;
}


DecoderConfig GptNeoConfig::to_decoder() const {
  DecoderConfig c;
  c.family = "GPT-Neo";
  c.source = source;
  c.vocab_size = vocab_size;
  c.hidden_size = hidden_size;
  c.num_layers = num_layers;
  c.num_heads = num_heads;
  c.head_dim = head_dim();
  c.intermediate_size = intermediate_size;
  c.max_positions = max_positions;
  c.norm = NormKind::LayerNorm;
  c.norm_eps = layer_norm_epsilon;
  c.positions = PositionKind::Learned;
  c.activation = MlpActivation::GeluNew;
  c.residual = ResidualWiring::Sequential;
  c.qkv_bias = false;
  c.out_bias = true;
  c.mlp_bias = true;
  c.tie_word_embeddings = tie_word_embeddings;
  for (AttentionKind kind : attention_layers)
    c.layers.push_back(AttentionLayer{kind == AttentionKind::Local ? window_size : 0, 1.0});  // no scaling
  return c;
}

const ModelFamily& gpt_neo_family() {
  static const ModelFamily family{"gpt_neo", "GPT-Neo", "transformer.", {"lm_head.weight"}, parse_gpt_neo,
                                  gpt_neo_rules, gpt_neo_ignored};
  return family;
}

GptNeo::GptNeo(DecoderModel&& model, GptNeoConfig config)
    : DecoderModel(std::move(model)), neo_config_(std::move(config)) {}

GptNeo GptNeo::from_tensors(GptNeoConfig config, const NamedTensors& weights, Device device,
                            const std::string& source) {
  const DecoderConfig decoder = config.to_decoder();
  const WeightSource tensors = WeightSource::in_memory(weights, source);
  const NamedTensors parameters = convert_weights(gpt_neo_family(), decoder, tensors, ModelPart::whole());
  return GptNeo(DecoderModel::from_parameters(decoder, parameters, device, source), std::move(config));
}

GptNeo GptNeo::load(const std::string& model_dir, Device device) {
  GptNeoConfig config = GptNeoConfig::load(model_dir + "/config.json");
  const WeightSource source = WeightSource::open_model_dir(model_dir);
  const DecoderConfig decoder = config.to_decoder();
  const NamedTensors parameters = convert_weights(gpt_neo_family(), decoder, source, ModelPart::whole());
  return GptNeo(DecoderModel::from_parameters(decoder, parameters, device, source.label()), std::move(config));
}

}  // namespace sae
