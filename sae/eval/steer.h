// Steering (sae_steer, docs/contract.md §7), as the original tutorial's steer.py does it: while the
// model generates, `strength` times the unit decoder direction of one SAE feature,
// W_dec[i] / ||W_dec[i]||, is added at the SAE's hook point (raw scale) at every position, the
// prompt's and each generated token's. The same prompt is continued twice, without and
// with the hook, with the same generation options and seed, so only the steering differs; then, as
// steer.py's last step, both texts are read back without steering (feature_strengths) and the
// steered one annotated (annotated_read_back).
// Letters: D the width at the SAE's hook point.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/json.h"
#include "lm/generate.h"
#include "lm/decoder_model.h"
#include "lm/tokenizer.h"
#include "sae/eval/sae_at_layer.h"

namespace sae {

// Adds `vector` [D] (on the model's device) to every row of the state at `site`.
SiteHooks steering_hook(const HookSite& site, const Tensor& vector);

struct SteerOptions {
  int64_t feature = 0;
  double strength = 0;  // finite
  int32_t bos = -1;     // put before the prompt (lm/text_windows.h); -1: none
  GenerateOptions generate;
};

struct SteerResult {
  std::vector<int32_t> prompt, unsteered, steered;  // token ids; the continuations without the prompt
  // The tutorial's check: each text (prompt and continuation, a BOS left out) read back by the model
  // without steering, and the feature's strength f_i ||W_dec[i]|| (sae_features' unit) at every token.
  std::vector<double> unsteered_strengths, steered_strengths;
};

// UsageError for a feature out of range or a strength that is not finite; DataError for a zero
// decoder row, an empty prompt without a BOS, or a prompt that leaves no room for the new tokens.
SteerResult steer(DecoderModel& model, const BpeTokenizer& tokenizer, const SaeAtLayer& sae, const std::string& prompt,
                  const SteerOptions& options);
// The strength f_i ||W_dec[i]|| of `feature` at every token of `ids`, read by `model` (no hooks) at
// the SAE's input hook and encoded as the SAE was trained (sae_at_layer.h reconstruct). With
// `bos_first`, ids[0] is a BOS, which gets no strength (a run that kept BOS rows normalises each
// story with it, as in training). DataError for features that are not finite.
std::vector<double> feature_strengths(DecoderModel& model, const SaeAtLayer& sae, const std::vector<int32_t>& ids,
                                      bool bos_first, int64_t feature);
// The largest of `strengths`, or 0 (none, or none above 0): what the text output and the JSON call
// a text's largest and the annotation shades relative to.
double largest_strength(const std::vector<double>& strengths);

// UsageError unless --strength is finite in float32 (1e39 is a finite double, inf once added).
void check_strength(double strength);

// Token bytes as text to show: the bytes, with every invalid UTF-8 sequence (a character split
// between tokens, cut off at the end) replaced by U+FFFD, as Hugging Face's decode does, and control
// bytes other than the newline (NUL, tab, escape) as their Unicode pictures (U+2400 + byte, DEL
// U+2421), so a column neither ends at a NUL nor takes a terminal's escape sequence; C1 controls,
// bidirectional marks and overrides and line separators as "<U+XXXX>" (utf8::acts_on_surrounding_text).
std::string display_text(const BpeTokenizer& tokenizer, const std::vector<int32_t>& ids);
std::string display_text(const std::string& bytes);  // the same for text (the prompt as given)

// The two continuations in two columns of `width` characters (code points), each column headed and
// wrapped at spaces; lines of the text break the column too.
std::string side_by_side(const std::string& left_title, const std::string& left, const std::string& right_title,
                         const std::string& right, int width);

// The steered text read back (the tutorial's last print): each token of prompt and continuation
// followed by a space and activation_block of its strength relative to the text's largest.
std::string annotated_read_back(const BpeTokenizer& tokenizer, const SteerResult& result, int32_t bos);

// {"prompt", "prompt_ids", "feature", "strength", "layer", "greedy", "temperature", "top_k", "seed",
//  "max_new_tokens", "unsteered": {"text", "ids", "strengths", "max_strength"}, "steered": {the same,
//  "annotated_text"}}: texts and ids without the prompt; strengths over prompt and continuation (a
//  BOS left out), 6 significant digits.
Json steer_json(const SteerResult& result, const BpeTokenizer& tokenizer, const SaeAtLayer& sae,
                const std::string& prompt, const SteerOptions& options);

}  // namespace sae
