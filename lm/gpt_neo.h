// GPT-Neo (TinyStories-33M and its kin) on the decoder model (lm/decoder_model.h), exactly as
// Hugging Face transformers computes it (docs/gpt_neo.md is the specification): the config.json
// rules, its family table (lm/model_family.h: Hugging Face's tensor names, q/k/v stacked at load)
// and GptNeo, a DecoderModel that keeps GPT-Neo's own config beside the decoder's.
// Letters: T tokens, d hidden size, H heads, hd = d / H, f MLP width, V vocabulary,
// P max positions, L layers. hidden_states[k] is Hugging Face's: k = 0 the embeddings, 1..L-1 the
// residual stream after block k, L the last block's output with ln_f applied.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"
#include "lm/decoder_model.h"
#include "lm/model_family.h"
#include "tensor/tensor.h"

namespace sae {

enum class AttentionKind { Global, Local };

// What the forward pass needs from config.json, after every rule of docs/gpt_neo.md section 1.
struct GptNeoConfig {
  int64_t vocab_size = 0;          // V
  int64_t hidden_size = 0;         // d
  int64_t num_layers = 0;          // L
  int64_t num_heads = 0;           // H
  int64_t max_positions = 0;       // P (max_position_embeddings)
  int64_t window_size = 256;       // local attention: a query sees exactly this many keys, itself included
  int64_t intermediate_size = 0;   // f (null in the file: 4 d)
  double layer_norm_epsilon = 1e-5;
  bool tie_word_embeddings = true;
  std::vector<AttentionKind> attention_layers;  // one per layer
  std::string source;                           // the file it came from, for messages

  int64_t head_dim() const { return hidden_size / num_heads; }

  // Throws DataError naming `source` and the key for anything docs/gpt_neo.md section 1 refuses
  // (and for sizes above 2^24, which no GPT-Neo has and which would only allocate absurdly).
  static GptNeoConfig from_json(const Json& config, const std::string& source);
  static GptNeoConfig load(const std::string& config_json_path);

  // Every parameter a weights file must hold, in file order of layers, with its shape ([out, in]
  // for Linear weights). lm_head.weight is listed only when the embeddings are not tied.
  std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes() const;
  // The decoder model's view of it (lm/decoder_model.h).
  DecoderConfig to_decoder() const;
};

class GptNeo : public DecoderModel {
 public:
  // dir/config.json and dir/model.safetensors (lm/model_loader.h: every expected tensor present with
  // its shape, F32, F16, BF16 or F64 widened to float32, finite; lm_head.weight used when present,
  // else the tied wte; the legacy buffers transformer.h.{i}.attn.attention.bias / .masked_bias
  // ignored; any other name refused). Errors are one-line DataErrors naming the file and tensor.
  static GptNeo load(const std::string& model_dir, Device device = Device::CPU);
  // The same checks on Hugging Face-named tensors in memory (e.g. lm/hashed_weights.h).
  static GptNeo from_tensors(GptNeoConfig config, const NamedTensors& weights, Device device,
                             const std::string& source);

  const GptNeoConfig& config() const { return neo_config_; }  // GPT-Neo's (DecoderModel::config hidden)

 private:
  GptNeo(DecoderModel&& model, GptNeoConfig config);
  GptNeoConfig neo_config_;
};

}  // namespace sae
