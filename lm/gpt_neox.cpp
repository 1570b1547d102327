// GPT-NeoX / Pythia (Hugging Face GPTNeoXForCausalLM) as a family of the decoder model
// (lm/decoder_model.h, lm/model_family.h; docs/models.md): rotary embeddings on the first
// rotary_pct of each head's dims (rotate-half form, base rotary_emb_base), scores scaled by
// 1/sqrt(hd), one fused query_key_value Linear whose rows run head by head (reordered at load), the
// attention and MLP in parallel from the block's input (use_parallel_residual, Pythia's) or in
// sequence, exact (erf) GELU, LayerNorm, untied unembedding (embed_out, or lm_head as transformers 5
// names it). Both config.json spellings are read: rotary_pct / rotary_emb_base (the Hub's Pythia
// files) and rope_parameters (what transformers 5 writes); RoPE scaling of any kind is refused.
#include <cmath>

#include "lm/config_rules.h"
#include "lm/model_family.h"

namespace sae {

namespace {

// A number from rope_parameters[new_key] or config[old_key] (they must agree when both are given),
// else `fallback`.
double rope_number(const Json& json, const Json* rope, const std::string& new_key, const std::string& old_key,
                   double fallback, const std::string& source) {
  const bool has_new = rope && rope->has(new_key) && !rope->at(new_key).is_null();
  const bool has_old = json.has(old_key) && !json.at(old_key).is_null();
  if (has_new && !rope->at(new_key).is_number())
    throw DataError(cat(source, ": 'rope_parameters.", new_key, "' must be a number, got ", rope->at(new_key).dump()));
  if (has_old && !json.at(old_key).is_number())
    throw DataError(cat(source, ": '", old_key, "' must be a number, got ", json.at(old_key).dump()));
  if (has_new && has_old && rope->at(new_key).as_number() != json.at(old_key).as_number())
    throw DataError(cat(source, ": 'rope_parameters.", new_key, "' (", rope->at(new_key).dump(), ") and '", old_key,
                        "' (", json.at(old_key).dump(), ") disagree"));
  if (has_new) return rope->at(new_key).as_number();
  if (has_old) return json.at(old_key).as_number();
  return fallback;
}

DecoderConfig parse_gpt_neox(const Json& json, const std::string& source) {
  require_model_type(json, "gpt_neox", source);
  DecoderConfig c;
  c.family = "GPT-NeoX";
  c.source = source;
  read_standard_sizes(json, source, c);
  if (c.hidden_size % c.num_heads != 0)
    throw DataError(cat(source, ": 'hidden_size' ", c.hidden_size, " is not divisible by 'num_attention_heads' ",
                        c.num_heads));
  c.head_dim = c.hidden_size / c.num_heads;
  const std::string act = string_or(json, "hidden_act", "gelu", source);
  if (act == "gelu") {
    c.activation = MlpActivation::GeluExact;
  } else if (act == "gelu_new" || act == "gelu_pytorch_tanh") {
    c.activation = MlpActivation::GeluNew;
  } else {
    throw DataError(cat(source, ": 'hidden_act' \"", printable(act),
                        "\" is not supported (gelu, gelu_new or gelu_pytorch_tanh)"));
  }
  c.norm = NormKind::LayerNorm;
  c.norm_eps = positive_number_or(json, "layer_norm_eps", 1e-5, source);
  c.residual = bool_or(json, "use_parallel_residual", true, source) ? ResidualWiring::Parallel
                                                                     : ResidualWiring::Sequential;
  const bool bias = bool_or(json, "attention_bias", true, source);
  c.qkv_bias = c.out_bias = bias;
  c.mlp_bias = true;
  c.tie_word_embeddings = bool_or(json, "tie_word_embeddings", false, source);

  std::string type;
  const Json* rope = rope_settings(json, source, type);
  if (type != "default")
    throw DataError(cat(source, ": RoPE scaling of type \"", printable(type),
                        "\" is not supported (GPT-NeoX here runs the default rotary embedding only)"));
  c.positions = PositionKind::Rotary;
  c.rotary_base = rope_number(json, rope, "rope_theta", "rotary_emb_base", 10000.0, source);
  const double factor = rope_number(json, rope, "partial_rotary_factor", "rotary_pct", 0.25, source);
  if (!(c.rotary_base > 0) || std::isinf(c.rotary_base))
    throw DataError(cat(source, ": the rotary base (rope_theta / rotary_emb_base) must be a positive number, got ",
                        c.rotary_base));
  if (!(factor > 0 && factor <= 1))
    throw DataError(cat(source, ": the rotary fraction (partial_rotary_factor / rotary_pct) must be in (0, 1], got ",
                        factor));
  c.rotary_dims = static_cast<int64_t>(static_cast<double>(c.head_dim) * factor);  // int(), as Hugging Face
  if (c.rotary_dims < 2 || c.rotary_dims % 2 != 0)
    throw DataError(cat(source, ": the rotary embedding turns ", c.rotary_dims, " dims of each head (head size ",
                        c.head_dim, " x ", factor, "); it needs an even number >= 2"));
  for (int64_t i = 0; i < c.num_layers; ++i)
    c.layers.push_back(AttentionLayer{0, 1.0 / std::sqrt(static_cast<double>(c.head_dim))});
  return c;
}

std::vector<WeightRule> gpt_neox_rules(const DecoderConfig& c) {
  const std::string b = "layers.{i}.";
  std::vector<WeightRule> rules = {
      {"embed.tokens", {"embed_in.weight"}},
      {"blocks.{i}.ln1.weight", {b + "input_layernorm.weight"}},
      {"blocks.{i}.ln1.bias", {b + "input_layernorm.bias"}},
      {"blocks.{i}.attn.qkv.weight", {b + "attention.query_key_value.weight"}, WeightTransform::QkvPerHead},
      {"blocks.{i}.attn.out.weight", {b + "attention.dense.weight"}},
      {"blocks.{i}.ln2.weight", {b + "post_attention_layernorm.weight"}},
      {"blocks.{i}.ln2.bias", {b + "post_attention_layernorm.bias"}},
      {"blocks.{i}.mlp.in.weight", {b + "mlp.dense_h_to_4h.weight"}},
      {"blocks.{i}.mlp.in.bias", {b + "mlp.dense_h_to_4h.bias"}},
      {"blocks.{i}.mlp.out.weight", {b + "mlp.dense_4h_to_h.weight"}},
      {"blocks.{i}.mlp.out.bias", {b + "mlp.dense_4h_to_h.bias"}},
      {"final_norm.weight", {"final_layer_norm.weight"}},
      {"final_norm.bias", {"final_layer_norm.bias"}},
  };
  if (c.qkv_bias) {
    rules.push_back({"blocks.{i}.attn.qkv.bias", {b + "attention.query_key_value.bias"}, WeightTransform::QkvPerHead});
    rules.push_back({"blocks.{i}.attn.out.bias", {b + "attention.dense.bias"}});
  }
  return rules;
}

// Buffers older files hold (the causal mask, its fill value, the rotary inverse frequencies);
// Hugging Face ignores them and recomputes what they held from the config.
bool gpt_neox_ignored(const std::string& name, int64_t layers) {
  return is_block_buffer(name, "layers.", {".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq"},
                         layers) ||
         name == "rotary_emb.inv_freq";
}

}  // namespace

const ModelFamily& gpt_neox_family() {
  static const ModelFamily family{"gpt_neox", "GPT-NeoX", "gpt_neox.", {"embed_out.weight", "lm_head.weight"},
                                  parse_gpt_neox, gpt_neox_rules, gpt_neox_ignored};
  return family;
}

}  // namespace sae
