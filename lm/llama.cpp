// The Llama-style families of the decoder model (lm/decoder_model.h, lm/model_family.h;
// docs/models.md): Hugging Face LlamaForCausalLM (Llama 2, 3, 3.1, 3.2), Qwen2ForCausalLM (Qwen 2,
// 2.5), MistralForCausalLM and Gemma2ForCausalLM. All four: RMSNorm, rotary embeddings on every dim
// of each head (rotate-half form, rope_theta; rope_type default, linear or llama3, any other refused),
// grouped-query attention (num_key_value_heads), separate q_proj / k_proj / v_proj stacked at load,
// a gated MLP (gate_proj, up_proj stacked; down_proj), sequential residual. Each adds:
//   Llama    attention_bias (q, k, v and o), mlp_bias, head_dim
//   Qwen 2   q/k/v biases (none on o_proj); sliding-window layers from layer_types, or from
//            use_sliding_window with max_window_layers (blocks from that index on) as older files say
//   Mistral  sliding_window on every block (null: global)
//   Gemma 2  embeddings times sqrt(d) (float32), RMSNorm weights stored as w for 1 + w (added at load),
//            norms after attention and after the MLP too, GeGLU (gelu_pytorch_tanh), scores scaled by
//            query_pre_attn_scalar^-1/2 and soft-capped (attn_logit_softcapping), final logits
//            soft-capped, sliding-window blocks alternating with global ones (layer_types; even
//            blocks local when absent), tied embeddings by default
// A sliding window of W: each query sees its own position and the W - 1 before it (Hugging Face's
// kv_idx > q_idx - W).
#include <cmath>

#include "lm/config_rules.h"
#include "lm/model_family.h"

namespace sae {

namespace {

enum class Style { Llama, Qwen2, Mistral, Gemma2 };

// rope_parameters (transformers 5) or rope_scaling with a top-level rope_theta (the Hub's older
// files). As transformers reads them (convert_rope_params_to_dict, standardize_rope_params): a
// non-empty rope_scaling wins over rope_parameters; the dict's rope_theta over the top-level one;
// llama3's original_max_position_embeddings is the top-level key's, else the dict's, else
// max_position_embeddings. Refused: parameters per layer type (a dict of dicts), and a
// partial_rotary_factor below 1 with a scaled rope_type (transformers cannot run either).
void read_rotary(const Json& json, DecoderConfig& c, const std::string& source) {
  std::string type;
  const Json* rope = rope_settings(json, source, type);
  if (rope)
    for (const auto& [key, value] : rope->items())
      if (value.is_object())
        throw DataError(cat(source, ": rope parameters per layer type ('", printable(key),
                            "': {...}) are not supported (one set for every block)"));
  // The dict's partial_rotary_factor, else a top-level one (transformers moves it into the dict).
  const Json* partial = rope && rope->has("partial_rotary_factor") ? &rope->at("partial_rotary_factor")
                        : json.has("partial_rotary_factor")         ? &json.at("partial_rotary_factor")
                                                                    : nullptr;
  if (type != "default" && partial && partial->is_number() && partial->as_number() != 1.0)
    throw DataError(cat(source, ": 'partial_rotary_factor' ", partial->dump(), " with rope_type \"", printable(type),
                        "\" is not supported (every head dimension rotates)"));
  auto number = [&](const std::string& key, double fallback) {
    if (rope && rope->has(key) && !rope->at(key).is_null()) {
      if (!rope->at(key).is_number() || !(rope->at(key).as_number() > 0) || std::isinf(rope->at(key).as_number()))
        throw DataError(cat(source, ": rope '", key, "' must be a positive number, got ", rope->at(key).dump()));
      return rope->at(key).as_number();
    }
    return fallback;
  };
  c.positions = PositionKind::Rotary;
  c.rotary_dims = c.head_dim;
  const bool dict_theta = rope && rope->has("rope_theta") && !rope->at("rope_theta").is_null();
  c.rotary_base = dict_theta ? number("rope_theta", 0) : positive_number_or(json, "rope_theta", 10000.0, source);
  if (type == "linear") {
    c.rope_scaling.kind = RopeScaling::Kind::Linear;
    c.rope_scaling.factor = number("factor", 0);
    if (c.rope_scaling.factor == 0) throw DataError(cat(source, ": rope_type \"linear\" needs a 'factor'"));
  } else if (type == "llama3") {
    RopeScaling& s = c.rope_scaling;
    s.kind = RopeScaling::Kind::Llama3;
    s.factor = number("factor", 0);
    s.low_freq_factor = number("low_freq_factor", 0);
    s.high_freq_factor = number("high_freq_factor", 0);
    s.original_positions = json.has("original_max_position_embeddings") &&
                                   !json.at("original_max_position_embeddings").is_null()
                               ? positive_number_or(json, "original_max_position_embeddings", 0, source)
                               : number("original_max_position_embeddings", static_cast<double>(c.max_positions));
    if (s.factor == 0 || s.low_freq_factor == 0 || s.high_freq_factor == 0)
      throw DataError(cat(source, ": rope_type \"llama3\" needs 'factor', 'low_freq_factor' and 'high_freq_factor'"));
    if (!(s.high_freq_factor > s.low_freq_factor))
      throw DataError(cat(source, ": rope 'high_freq_factor' (", s.high_freq_factor, ") must be above 'low_freq_factor' (",
                          s.low_freq_factor, ")"));
  } else if (type != "default") {
    throw DataError(cat(source, ": rope_type \"", printable(type),
                        "\" is not supported (default, linear and llama3 are)"));
  }
}

// The window of each block, as transformers' config classes set it: layer_types when given
// ("full_attention" / "sliding_attention"), else the family's rule (Mistral: every block; Qwen 2:
// blocks from max_window_layers (28 when left out) on, only with use_sliding_window; Gemma 2: the
// even blocks). sliding_window left out is 4096 (Mistral, Qwen 2, Gemma 2); null: no window
// (Mistral, Qwen 2; a Gemma 2 block that slides then needs one).
std::vector<int64_t> read_windows(const Json& json, Style style, int64_t layers, const std::string& source) {
  if (style == Style::Llama) return std::vector<int64_t>(static_cast<size_t>(layers), 0);  // LlamaModel never slides
  int64_t window = 0;
  if (json.has("sliding_window") && !json.at("sliding_window").is_null())
    window = positive_int(json, "sliding_window", source);
  else if (!json.has("sliding_window") && style != Style::Llama)
    window = 4096;
  const bool qwen_slides = style == Style::Qwen2 && bool_or(json, "use_sliding_window", false, source);
  if (style == Style::Qwen2 && !qwen_slides) window = 0;  // Qwen2Config drops sliding_window
  std::vector<int64_t> windows(static_cast<size_t>(layers), 0);
  if (json.has("layer_types") && !json.at("layer_types").is_null()) {
    const Json& types = json.at("layer_types");
    if (!types.is_array() || static_cast<int64_t>(types.size()) != layers)
      throw DataError(cat(source, ": 'layer_types' must be a list of ", layers, " strings"));
    for (int64_t i = 0; i < layers; ++i) {
      const Json& type = types.at(static_cast<size_t>(i));
      const std::string name = type.is_string() ? type.as_string() : type.dump();
      if (name == "sliding_attention") {
        if (window == 0)
          throw DataError(cat(source, ": 'layer_types' names sliding_attention but ",
                              style == Style::Qwen2 && !qwen_slides ? "'use_sliding_window' is false"
                                                                    : "'sliding_window' is not set"));
        windows[static_cast<size_t>(i)] = window;
      } else if (name != "full_attention" && name != "attention") {  // "attention": transformers' older name
        throw DataError(cat(source, ": 'layer_types' entry ", i, " \"", printable(name),
                            "\" is not supported (full_attention or sliding_attention)"));
      }
    }
    return windows;
  }
  int64_t qwen_from = 28;  // Qwen2Config's max_window_layers
  if (style == Style::Qwen2 && json.has("max_window_layers") && !json.at("max_window_layers").is_null()) {
    const Json& m = json.at("max_window_layers");
    qwen_from = m.is_number() && m.as_number() == 0 ? 0 : positive_int(json, "max_window_layers", source);
  }
  for (int64_t i = 0; i < layers; ++i) {
    bool sliding = false;
    if (style == Style::Mistral) sliding = window > 0;
    if (style == Style::Qwen2) sliding = window > 0 && i >= qwen_from;
    if (style == Style::Gemma2) sliding = (i + 1) % 2 == 1;
    if (sliding && window == 0) throw DataError(cat(source, ": sliding-window attention needs 'sliding_window'"));
    if (sliding) windows[static_cast<size_t>(i)] = window;
  }
  return windows;
}

DecoderConfig parse(const Json& json, Style style, const std::string& source) {
  static const char* const kTypes[] = {"llama", "qwen2", "mistral", "gemma2"};
  static const char* const kNames[] = {"Llama", "Qwen 2", "Mistral", "Gemma 2"};
  require_model_type(json, kTypes[static_cast<int>(style)], source);
  DecoderConfig c;
  c.family = kNames[static_cast<int>(style)];
  c.source = source;
  read_standard_sizes(json, source, c);
  // Left out: the config class's default (Llama: one per query head; Qwen 2: 32, Mistral: 8, Gemma 2:
  // 4); null: one per query head.
  static const int64_t kDefaultKvHeads[] = {0, 32, 8, 4};
  const int64_t kv_default = kDefaultKvHeads[static_cast<int>(style)];
  c.num_kv_heads = !json.has("num_key_value_heads")           ? (kv_default > 0 ? kv_default : c.num_heads)
                   : json.at("num_key_value_heads").is_null() ? c.num_heads
                                                              : positive_int(json, "num_key_value_heads", source);
  if (c.num_heads % c.num_kv_heads != 0)
    throw DataError(cat(source, ": 'num_attention_heads' ", c.num_heads, " is not a multiple of 'num_key_value_heads' ",
                        c.num_kv_heads, json.has("num_key_value_heads") ? "" : " (left out: the config class's default)"));
  if (json.has("head_dim") && !json.at("head_dim").is_null()) {
    c.head_dim = positive_int(json, "head_dim", source);
  } else if (style == Style::Gemma2) {
    c.head_dim = 256;  // Gemma2Config's default
  } else {
    if (c.hidden_size % c.num_heads != 0)
      throw DataError(cat(source, ": 'hidden_size' ", c.hidden_size, " is not divisible by 'num_attention_heads' ",
                          c.num_heads));
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) throw DataError(cat(source, ": 'head_dim' ", c.head_dim, " must be even (rotary pairs)"));
  c.norm = NormKind::RMSNorm;
  c.norm_eps = positive_number_or(json, "rms_norm_eps", 1e-6, source);
  c.residual = ResidualWiring::Sequential;

  const std::string act_key = style == Style::Gemma2 ? "hidden_activation" : "hidden_act";
  const std::string act = string_or(json, act_key, style == Style::Gemma2 ? "gelu_pytorch_tanh" : "silu", source);
  if (act == "silu" || act == "swish") {
    c.activation = MlpActivation::SwiGlu;
  } else if (act == "gelu_pytorch_tanh" || act == "gelu_new") {
    c.activation = MlpActivation::GeGlu;
  } else {
    throw DataError(cat(source, ": '", act_key, "' \"", printable(act),
                        "\" is not supported (silu, or gelu_pytorch_tanh / gelu_new)"));
  }

  // Biases as transformers' classes build them: Qwen 2 always on q, k, v (nowhere else); attention_bias
  // (q, k, v, o) read by Llama and Gemma 2, mlp_bias by Llama only; Mistral has none (those classes
  // ignore the keys, and a file's bias tensors are then refused as unexpected).
  const bool attention_bias =
      (style == Style::Llama || style == Style::Gemma2) && bool_or(json, "attention_bias", false, source);
  c.qkv_bias = style == Style::Qwen2 || attention_bias;
  c.out_bias = attention_bias;
  c.mlp_bias = style == Style::Llama && bool_or(json, "mlp_bias", false, source);
  c.tie_word_embeddings = bool_or(json, "tie_word_embeddings", style == Style::Gemma2, source);
  read_rotary(json, c, source);

  double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  if (style == Style::Gemma2) {
    refuse_unless(json, "use_bidirectional_attention", Json(false),
                  "Gemma2Config's bidirectional attention (an encoder's); a language model attends left to right", source);
    c.embed_scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
    c.post_norms = true;
    scale = 1.0 / std::sqrt(positive_number_or(json, "query_pre_attn_scalar", 256.0, source));
    // Soft-capping: null turns it off; absent, Gemma2Config's defaults.
    auto cap = [&](const std::string& key, double fallback) {
      if (json.has(key) && json.at(key).is_null()) return 0.0;
      return positive_number_or(json, key, fallback, source);
    };
    c.attn_softcap = cap("attn_logit_softcapping", 50.0);
    c.final_softcap = cap("final_logit_softcapping", 30.0);
  }
  for (int64_t window : read_windows(json, style, c.num_layers, source))
    c.layers.push_back(AttentionLayer{window, scale});
  return c;
}

std::vector<WeightRule> rules(const DecoderConfig& c, Style style) {
  const std::string b = "layers.{i}.";
  const int64_t q = c.num_heads * c.head_dim, kv = c.kv_width(), f = c.intermediate_size;
  const WeightTransform norm = style == Style::Gemma2 ? WeightTransform::PlusOne : WeightTransform::Copy;
  std::vector<WeightRule> r = {
      {"embed.tokens", {"embed_tokens.weight"}},
      {"blocks.{i}.ln1.weight", {b + "input_layernorm.weight"}, norm},
      {"blocks.{i}.attn.qkv.weight",
       {b + "self_attn.q_proj.weight", b + "self_attn.k_proj.weight", b + "self_attn.v_proj.weight"},
       WeightTransform::StackRows,
       {q, kv, kv}},
      {"blocks.{i}.attn.out.weight", {b + "self_attn.o_proj.weight"}},
      {"blocks.{i}.mlp.in.weight", {b + "mlp.gate_proj.weight", b + "mlp.up_proj.weight"}, WeightTransform::StackRows},
      {"blocks.{i}.mlp.out.weight", {b + "mlp.down_proj.weight"}},
      {"final_norm.weight", {"norm.weight"}, norm},
  };
  if (style == Style::Gemma2) {
    r.push_back({"blocks.{i}.ln1_post.weight", {b + "post_attention_layernorm.weight"}, norm});
    r.push_back({"blocks.{i}.ln2.weight", {b + "pre_feedforward_layernorm.weight"}, norm});
    r.push_back({"blocks.{i}.ln2_post.weight", {b + "post_feedforward_layernorm.weight"}, norm});
  } else {
    r.push_back({"blocks.{i}.ln2.weight", {b + "post_attention_layernorm.weight"}});
  }
  if (c.qkv_bias)
    r.push_back({"blocks.{i}.attn.qkv.bias",
                 {b + "self_attn.q_proj.bias", b + "self_attn.k_proj.bias", b + "self_attn.v_proj.bias"},
                 WeightTransform::StackRows,
                 {q, kv, kv}});
  if (c.out_bias) r.push_back({"blocks.{i}.attn.out.bias", {b + "self_attn.o_proj.bias"}});
  if (c.mlp_bias) {
    r.push_back({"blocks.{i}.mlp.in.bias", {b + "mlp.gate_proj.bias", b + "mlp.up_proj.bias"}, WeightTransform::StackRows,
                 {f, f}});
    r.push_back({"blocks.{i}.mlp.out.bias", {b + "mlp.down_proj.bias"}});
  }
  return r;
}

// Rotary inverse frequencies some older files hold; Hugging Face recomputes them.
bool ignored(const std::string& name, int64_t layers) {
  return is_block_buffer(name, "layers.", {".self_attn.rotary_emb.inv_freq"}, layers) || name == "rotary_emb.inv_freq";
}

DecoderConfig parse_llama(const Json& json, const std::string& source) { return parse(json, Style::Llama, source); }
DecoderConfig parse_qwen2(const Json& json, const std::string& source) { return parse(json, Style::Qwen2, source); }
DecoderConfig parse_mistral(const Json& json, const std::string& source) { return parse(json, Style::Mistral, source); }
DecoderConfig parse_gemma2(const Json& json, const std::string& source) { return parse(json, Style::Gemma2, source); }
std::vector<WeightRule> llama_rules(const DecoderConfig& c) { return rules(c, Style::Llama); }
std::vector<WeightRule> qwen2_rules(const DecoderConfig& c) { return rules(c, Style::Qwen2); }
std::vector<WeightRule> mistral_rules(const DecoderConfig& c) { return rules(c, Style::Mistral); }
std::vector<WeightRule> gemma2_rules(const DecoderConfig& c) { return rules(c, Style::Gemma2); }

}  // namespace

const ModelFamily& llama_family() {
  static const ModelFamily family{"llama", "Llama", "model.", {"lm_head.weight"}, parse_llama, llama_rules, ignored};
  return family;
}
const ModelFamily& qwen2_family() {
  static const ModelFamily family{"qwen2", "Qwen 2", "model.", {"lm_head.weight"}, parse_qwen2, qwen2_rules, ignored};
  return family;
}
const ModelFamily& mistral_family() {
  static const ModelFamily family{"mistral", "Mistral", "model.", {"lm_head.weight"}, parse_mistral, mistral_rules,
                                  ignored};
  return family;
}
const ModelFamily& gemma2_family() {
  static const ModelFamily family{"gemma2", "Gemma 2", "model.", {"lm_head.weight"}, parse_gemma2, gemma2_rules,
                                  ignored};
  return family;
}

}  // namespace sae
