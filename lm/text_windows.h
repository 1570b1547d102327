// How text becomes the model's inputs, SAELens's way (docs/models.md, "Text"): each document's
// tokens are cut in order into windows of at most `context` positions; with a BOS token, every
// window starts with it (SAELens's prepend_bos: the token at position 0 of each context) and holds
// context - 1 of the document's tokens. Whether a BOS is put there is --prepend-bos on | off | auto
// (auto: what the model's tokenizer does, i.e. when its post-processor adds one: Llama 3 yes, GPT-2
// and Pythia no). The activations at BOS positions are left out of training, statistics and caches
// unless asked for (their norms are often 10-100x the others').
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "lm/tokenizer.h"

namespace sae {

enum class BosMode { Auto, On, Off };
BosMode parse_bos_mode(const std::string& text);  // UsageError naming --prepend-bos
const char* bos_mode_name(BosMode mode);
// The BOS id a run puts before each window: for on the tokenizer's BOS (UsageError when the folder
// names none), for auto the one its post-processor adds (-1 when it adds none), for off -1.
int32_t resolve_bos(BosMode mode, const BpeTokenizer& tokenizer);
// The one line for --bos-activations keep when resolve_bos put no BOS (there is no row to keep).
std::string no_bos_to_keep(BosMode mode);

struct WindowOptions {
  int32_t bos = -1;      // the token before every window; -1: none
  int64_t context = 0;   // positions per window, BOS included (>= 2 with a BOS, >= 1 without)
};

struct TokenWindow {
  std::vector<int32_t> input;  // what the model runs: BOS (when any) and the document's tokens
  int64_t first_token = 0;     // where those tokens start in the document
  int64_t tokens = 0;          // how many of the document's tokens it holds
  bool bos = false;            // input[0] is the BOS
};

// UsageError for a context that cannot hold a token.
void check_window_options(const WindowOptions& options);
// UsageError for a --context-size below 0 or above 2^24 (every program that cuts windows says it alike).
void check_context_size(int64_t context_size);
// The number of windows of a document of `tokens` tokens (0 for an empty one).
int64_t window_count(int64_t tokens, const WindowOptions& options);
// Window k (0 <= k < window_count) of the document.
TokenWindow document_window(const std::vector<int32_t>& document, int64_t k, const WindowOptions& options);

}  // namespace sae
