// A model family (GPT-Neo, GPT-2, GPT-NeoX / Pythia, Llama, Qwen 2, Mistral, Gemma 2) as data for the one decoder model
// (lm/decoder_model.h): how its config.json becomes a DecoderConfig, and a table of how its file's
// tensors become our parameters. Loading (lm/model_loader.h) and checking are written once for all.
// Letters: d hidden size, H heads, hd head size.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/json.h"
#include "lm/decoder_model.h"

namespace sae {

// How the file's tensor(s) become one of our parameters.
enum class WeightTransform {
  Copy,        // the same shape
  Transpose,   // stored [in, out] (GPT-2's Conv1D); ours is [out, in]
  StackRows,   // several tensors stacked along dim 0 in order (GPT-Neo's q_proj, k_proj, v_proj); equal
               // parts unless the rule gives each file's rows (grouped-query q_proj, k_proj, v_proj)
  QkvPerHead,  // one fused q/k/v tensor whose rows run head by head, [H, 3, hd] (GPT-NeoX's
               // query_key_value); ours runs [3, H, hd]: all queries, all keys, all values
  PlusOne,     // the same shape, 1 added in float32 (Gemma's RMSNorm multiplies by 1 + w)
};

struct WeightRule {
  std::string ours;                // our parameter ("blocks.{i}.attn.qkv.weight"; {i} the block)
  std::vector<std::string> files;  // the file's tensors, after the base prefix ({i} the block)
  WeightTransform transform = WeightTransform::Copy;
  std::vector<int64_t> rows = {};  // StackRows: each file's rows (empty: equal parts)
};

// vocab_size, hidden_size, num_hidden_layers (at most kMaxModelLayers), num_attention_heads,
// intermediate_size and max_position_embeddings into c, each a positive_int (lm/config_rules.h): the
// sizes GPT-NeoX and the Llama-style families name alike. Defined in config_rules.cpp.
void read_standard_sizes(const Json& config, const std::string& source, DecoderConfig& c);

struct ModelFamily {
  std::string model_type;   // config.json's "model_type"
  std::string name;         // for messages: "GPT-2"
  std::string base_prefix;  // the base model's prefix in a ...ForCausalLM file ("transformer."); files
                            // saved from the base model alone lack it, and are read too
  std::vector<std::string> unembedding_files;  // the untied (or overriding) unembedding's names, no prefix
  DecoderConfig (*parse_config)(const Json& config, const std::string& source);
  // Every rule: the embeddings', one block's (with {i}) and the final norm's.
  std::vector<WeightRule> (*weight_rules)(const DecoderConfig& config);
  // Tensors Hugging Face ignores when loading (old mask buffers, rotary caches), name after the prefix.
  bool (*ignored)(const std::string& name, int64_t layers);
};

const ModelFamily& gpt_neo_family();  // lm/gpt_neo.cpp
const ModelFamily& gpt2_family();     // lm/gpt2.cpp
const ModelFamily& gpt_neox_family(); // lm/gpt_neox.cpp
const ModelFamily& llama_family();    // lm/llama.cpp
const ModelFamily& qwen2_family();    // lm/llama.cpp
const ModelFamily& mistral_family();  // lm/llama.cpp
const ModelFamily& gemma2_family();   // lm/llama.cpp
// The family whose model_type config.json names; DataError listing the supported ones otherwise.
const ModelFamily& family_for(const Json& config, const std::string& source);
std::vector<const ModelFamily*> all_families();
// Their names for help texts: "GPT-Neo, GPT-2, GPT-NeoX (Pythia), Llama, Qwen 2, Mistral or Gemma 2".
std::string supported_families_text();

// "h.{i}.ln_1.weight" with i = 3 -> "h.3.ln_1.weight".
std::string with_block(const std::string& pattern, int64_t block);
// True when `name` is prefix + "<i>" + one of `suffixes` with i < layers (for the ignored buffers).
bool is_block_buffer(const std::string& name, const std::string& prefix, const std::vector<std::string>& suffixes,
                     int64_t layers);

}  // namespace sae
