// Text generation with a decoder model and its KV cache (DecoderModel::logits_cached): the prompt is run once,
// then one new token at a time, each chosen from the last position's logits greedily (argmax) or
// by sampling (temperature, optionally only the top k), with our seeded Rng, so the same seed gives
// the same tokens on the same build. Hooks (a steering vector, an SAE splice, at any hook point) are
// applied to every position, prompt and generated, as DecoderModel::logits applies them to a whole sequence.
// Generation stops after max_new_tokens or right after producing an end-of-text id (end_of_text_ids).
// Letters: V vocabulary, P the model's positions.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "lm/decoder_model.h"
#include "tensor/rng.h"

namespace sae {

struct GenerateOptions {
  int64_t max_new_tokens = 50;
  bool greedy = false;       // argmax of the logits (the lowest id among equal maxima), no sampling
  double temperature = 1.0;  // sampling: softmax(logits / temperature); > 0
  int64_t top_k = 0;         // sampling: only logits >= the k-th largest (ties kept, as HF); 0 = all
  uint64_t seed = 0;         // sampling: the Rng's seed
  std::vector<int32_t> eos_ids;  // stop right after generating any of these (it is kept); none: never early
  int64_t vocab_limit = 0;   // only ids below it are chosen (a model whose vocabulary is padded past
                             // its tokenizer's: Pythia, Qwen 2.5); 0: every id of the model's
};

// UsageError naming the option for a temperature <= 0 or not finite, top_k < 0, max_new_tokens < 0,
// vocab_limit < 0.
void check_generate_options(const GenerateOptions& options);

// The ids whose generation ends a text, as Hugging Face's generate stops: the tokenizer's end of text
// (`tokenizer_eot`, -1: none) and the model folder's generation_config.json eos_token_id (one id or a
// list; without that file, config.json's): an instruct model's end of turn (Llama 3's <|eot_id|>, Qwen
// 2.5's <|im_end|>, Gemma 2's <end_of_turn>) is there. Ids outside [0, vocab) are left out (never
// generated). DataError naming the file and key for an eos_token_id that is not an id or a list of ids.
std::vector<int32_t> end_of_text_ids(const std::string& model_dir, int32_t tokenizer_eot, int64_t vocab);

// The next token from one row of logits [V] (host float32): the argmax when greedy, else a draw
// from softmax(logits / temperature) restricted to the logits >= the top_k-th largest (all ties at
// the boundary kept, as transformers' TopKLogitsWarper), computed in double, with one
// rng.uniform() per draw (the first id whose cumulative probability exceeds it).
int32_t choose_next_token(const float* logits, int64_t vocab, const GenerateOptions& options, Rng& rng);

// The generated ids (without the prompt) after `prompt` (>= 1 token). The prompt plus
// max_new_tokens must fit in the model's P positions (DataError naming both otherwise), so that
// every token is generated with the same context a full forward over the sequence would see.
std::vector<int32_t> generate(DecoderModel& model, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                              const SiteHooks& hooks = {});
// The same with a hook on every hidden_states[k] (DecoderModel::logits).
std::vector<int32_t> generate(DecoderModel& model, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                              const ResidualHook& hook);

}  // namespace sae
