// GPT-2 (Hugging Face GPT2LMHeadModel) as a family of the decoder model (lm/decoder_model.h,
// lm/model_family.h; docs/models.md): learned positions, pre-LayerNorm sequential blocks, q/k/v as
// one Conv1D, scores scaled by 1/sqrt(hd) (scale_attn_weights) and optionally by 1/(L+1)
// (scale_attn_by_inverse_layer_idx), gelu_new, tied unembedding. Conv1D stores its weight [in, out]
// (the transpose of a Linear's): the table says Transpose. Options that change the math and that we
// do not run are refused in one line.
#include <cmath>

#include "lm/config_rules.h"
#include "lm/model_family.h"

namespace sae {

namespace {

// gelu_new and gelu_pytorch_tanh are one function (tanh approximation); gelu is the erf GELU.
MlpActivation activation_of(const Json& json, const std::string& key, const std::string& source) {
  const std::string name = string_or(json, key, "gelu_new", source);
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return MlpActivation::GeluNew;
  if (name == "gelu") return MlpActivation::GeluExact;
  throw DataError(cat(source, ": '", key, "' \"", printable(name),
                      "\" is not supported (gelu_new, gelu_pytorch_tanh or gelu)"));
}

DecoderConfig parse_gpt2(const Json& json, const std::string& source) {
  require_model_type(json, "gpt2", source);
  DecoderConfig c;
  c.family = "GPT-2";
  c.source = source;
  c.vocab_size = positive_int(json, "vocab_size", source);
  c.hidden_size = aliased_int(json, "n_embd", "hidden_size", source);
  c.num_layers = aliased_int(json, "n_layer", "num_hidden_layers", source);
  c.num_heads = aliased_int(json, "n_head", "num_attention_heads", source);
  c.max_positions = aliased_int(json, "n_positions", "max_position_embeddings", source);
  if (c.num_layers > kMaxModelLayers)
    throw DataError(cat(source, ": 'n_layer' ", c.num_layers, " is above ", kMaxModelLayers));
  if (c.hidden_size % c.num_heads != 0)
    throw DataError(cat(source, ": 'n_embd' ", c.hidden_size, " is not divisible by 'n_head' ", c.num_heads));
  c.head_dim = c.hidden_size / c.num_heads;
  c.intermediate_size = 4 * c.hidden_size;
  if (json.has("n_inner") && !json.at("n_inner").is_null()) c.intermediate_size = positive_int(json, "n_inner", source);
  c.activation = activation_of(json, "activation_function", source);
  c.norm = NormKind::LayerNorm;
  c.norm_eps = positive_number_or(json, "layer_norm_epsilon", 1e-5, source);
  c.positions = PositionKind::Learned;
  c.residual = ResidualWiring::Sequential;
  c.qkv_bias = c.out_bias = c.mlp_bias = true;
  c.tie_word_embeddings = bool_or(json, "tie_word_embeddings", true, source);
  refuse_unless(json, "add_cross_attention", Json(false), "an encoder-decoder's cross-attention; a language model has none",
                source);
  // reorder_and_upcast_attn changes only the order of float16 work; in float32 it is the same math.
  bool_or(json, "reorder_and_upcast_attn", false, source);
  const bool scale = bool_or(json, "scale_attn_weights", true, source);
  const bool by_layer = bool_or(json, "scale_attn_by_inverse_layer_idx", false, source);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    double s = scale ? 1.0 / std::sqrt(static_cast<double>(c.head_dim)) : 1.0;
    if (by_layer) s /= static_cast<double>(i + 1);
    c.layers.push_back(AttentionLayer{0, s});
  }
  return c;
}

std::vector<WeightRule> gpt2_rules(const DecoderConfig&) {
  const std::string b = "h.{i}.";
  const WeightTransform conv = WeightTransform::Transpose;
  return {
      {"embed.tokens", {"wte.weight"}},
      {"embed.positions", {"wpe.weight"}},
      {"blocks.{i}.ln1.weight", {b + "ln_1.weight"}},
      {"blocks.{i}.ln1.bias", {b + "ln_1.bias"}},
      {"blocks.{i}.attn.qkv.weight", {b + "attn.c_attn.weight"}, conv},
      {"blocks.{i}.attn.qkv.bias", {b + "attn.c_attn.bias"}},
      {"blocks.{i}.attn.out.weight", {b + "attn.c_proj.weight"}, conv},
      {"blocks.{i}.attn.out.bias", {b + "attn.c_proj.bias"}},
      {"blocks.{i}.ln2.weight", {b + "ln_2.weight"}},
      {"blocks.{i}.ln2.bias", {b + "ln_2.bias"}},
      {"blocks.{i}.mlp.in.weight", {b + "mlp.c_fc.weight"}, conv},
      {"blocks.{i}.mlp.in.bias", {b + "mlp.c_fc.bias"}},
      {"blocks.{i}.mlp.out.weight", {b + "mlp.c_proj.weight"}, conv},
      {"blocks.{i}.mlp.out.bias", {b + "mlp.c_proj.bias"}},
      {"final_norm.weight", {"ln_f.weight"}},
      {"final_norm.bias", {"ln_f.bias"}},
  };
}

// h.{i}.attn.bias (the causal mask) and h.{i}.attn.masked_bias: buffers older files hold (the
// openai-community/gpt2 file does); Hugging Face ignores them.
bool gpt2_ignored(const std::string& name, int64_t layers) {
  return is_block_buffer(name, "h.", {".attn.bias", ".attn.masked_bias"}, layers);
}

}  // namespace

const ModelFamily& gpt2_family() {
  static const ModelFamily family{"gpt2", "GPT-2", "transformer.", {"lm_head.weight"}, parse_gpt2, gpt2_rules,
                                  gpt2_ignored};
  return family;
}

}  // namespace sae
