// Documents into windows (see text_windows.h).
#include "lm/text_windows.h"

#include <algorithm>

#include "tensor/error.h"

namespace sae {

BosMode parse_bos_mode(const std::string& text) {
  if (text == "auto") return BosMode::Auto;
  if (text == "on") return BosMode::On;
  if (text == "off") return BosMode::Off;
  throw UsageError(cat("--prepend-bos: expected on, off or auto, got '", printable(text), "'"));
}

const char* bos_mode_name(BosMode mode) {
  switch (mode) {
    case BosMode::Auto: return "auto";
    case BosMode::On: return "on";
    case BosMode::Off: return "off";
  }
  return "?";
}

int32_t resolve_bos(BosMode mode, const BpeTokenizer& tokenizer) {
  switch (mode) {
    case BosMode::Off: return -1;
    case BosMode::Auto: return tokenizer.bos_prefix().size() == 1 ? tokenizer.bos_prefix()[0] : -1;
    case BosMode::On:
      if (tokenizer.bos_id() < 0)
        throw UsageError(cat("--prepend-bos on: ", tokenizer.source(), " names no BOS token (no post-processor BOS, no "
                             "bos_token in tokenizer_config.json, no bos_token_id in config.json)"));
      return tokenizer.bos_id();
  }
  return -1;
}

std::string no_bos_to_keep(BosMode mode) {
  return cat("--bos-activations keep keeps the BOS rows, and this run puts no BOS before its windows (--prepend-bos ",
             bos_mode_name(mode), mode == BosMode::Auto ? ": the tokenizer adds none" : "",
             "): give --prepend-bos on, or leave --bos-activations out");
}

void check_context_size(int64_t context_size) {
  if (context_size < 0 || context_size > (int64_t(1) << 24))
    throw UsageError(cat("--context-size must be >= 0 (0: the model's positions) and at most 2^24, got ", context_size));
}

void check_window_options(const WindowOptions& options) {
  const int64_t least = options.bos >= 0 ? 2 : 1;
  if (options.context < least)
    throw UsageError(cat("--context-size must be >= ", least, options.bos >= 0 ? " (the BOS and one token)" : "", ", got ",
                         options.context));
}

int64_t window_count(int64_t tokens, const WindowOptions& options) {
  const int64_t per = options.context - (options.bos >= 0 ? 1 : 0);
  return (tokens + per - 1) / per;
}

TokenWindow document_window(const std::vector<int32_t>& document, int64_t k, const WindowOptions& options) {
  const int64_t per = options.context - (options.bos >= 0 ? 1 : 0);
  TokenWindow w;
  w.first_token = k * per;
  w.tokens = std::min<int64_t>(per, static_cast<int64_t>(document.size()) - w.first_token);
  w.bos = options.bos >= 0;
  if (w.bos) w.input.push_back(options.bos);
  w.input.insert(w.input.end(), document.begin() + w.first_token, document.begin() + w.first_token + w.tokens);
  return w;
}

}  // namespace sae
