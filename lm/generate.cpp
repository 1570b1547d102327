// generate and the choice of the next token (see generate.h). V vocabulary, P positions.
#include "lm/generate.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <numeric>

#include "io/json.h"
#include "tensor/ops.h"

namespace sae {

void check_generate_options(const GenerateOptions& options) {
  if (options.max_new_tokens < 0)
    throw UsageError(cat("--max-new-tokens must be >= 0, got ", options.max_new_tokens));
  if (!options.greedy && !(options.temperature > 0 && std::isfinite(options.temperature)))
    throw UsageError(cat("--temperature must be a positive number, got ", options.temperature));
  if (options.top_k < 0) throw UsageError(cat("--top-k must be >= 0 (0: the whole vocabulary), got ", options.top_k));
  if (options.vocab_limit < 0) throw UsageError(cat("generate: vocab_limit must be >= 0, got ", options.vocab_limit));
}

std::vector<int32_t> end_of_text_ids(const std::string& model_dir, int32_t tokenizer_eot, int64_t vocab) {
  std::vector<int32_t> ids;
  const auto add = [&](int64_t id) {
    if (id >= 0 && id < vocab && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(static_cast<int32_t>(id));
  };
  add(tokenizer_eot);
  std::string path = model_dir + "/generation_config.json";
  if (!std::filesystem::is_regular_file(path)) path = model_dir + "/config.json";
  if (!std::filesystem::is_regular_file(path)) return ids;
  const Json config = read_json_file(path);
  if (!config.is_object() || !config.has("eos_token_id") || config.at("eos_token_id").is_null()) return ids;
  const Json& eos = config.at("eos_token_id");
  const auto id_of = [&](const Json& v) {
    const double x = v.is_number() ? v.as_number() : 0.5;
    if (x != std::floor(x) || std::abs(x) > 9007199254740992.0)
      throw DataError(cat(path, ": 'eos_token_id' must be a token id or a list of them, got ", printable(eos.dump(), 200)));
    return static_cast<int64_t>(x);
  };
  if (eos.is_array()) {
    for (const Json& v : eos.elements()) add(id_of(v));
  } else {
    add(id_of(eos));
  }
  return ids;
}

int32_t choose_next_token(const float* logits, int64_t vocab, const GenerateOptions& options, Rng& rng) {
  if (options.greedy) {
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; ++v)
      if (logits[v] > logits[best]) best = v;  // strictly greater: the lowest id wins a tie
    return static_cast<int32_t>(best);
  }
  // The candidates, in id order: every id, or those whose logit is at least the top_k-th largest
  // (ties at the boundary are all kept, as transformers' TopKLogitsWarper keeps them).
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  int64_t candidates = vocab;
  if (options.top_k > 0 && options.top_k < vocab) {
    std::vector<float> sorted(logits, logits + vocab);
    std::nth_element(sorted.begin(), sorted.begin() + (options.top_k - 1), sorted.end(), std::greater<float>());
    const float kth = sorted[options.top_k - 1];
    candidates = 0;
    for (int64_t v = 0; v < vocab; ++v)
      if (logits[v] >= kth) ids[candidates++] = static_cast<int32_t>(v);
  }
  double largest = -INFINITY;
  for (int64_t c = 0; c < candidates; ++c) largest = std::max(largest, static_cast<double>(logits[ids[c]]));
  std::vector<double> weight(candidates);
  double total = 0;
  for (int64_t c = 0; c < candidates; ++c) {
    weight[c] = std::exp((static_cast<double>(logits[ids[c]]) - largest) / options.temperature);
    total += weight[c];
  }
  const double u = rng.uniform() * total;
  double cumulative = 0;
  for (int64_t c = 0; c < candidates; ++c) {
    cumulative += weight[c];
    if (u < cumulative) return ids[c];
  }
  // Only reachable by rounding when u is within an ulp of the total: the last id with any weight.
  for (int64_t c = candidates - 1; c > 0; --c)
    if (weight[c] > 0) return ids[c];
  return ids[0];
}

std::vector<int32_t> generate(DecoderModel& model, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                              const ResidualHook& hook) {
  return generate(model, prompt, options, model.hidden_state_hooks(hook, model.config().num_layers));
}

std::vector<int32_t> generate(DecoderModel& model, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                              const SiteHooks& hook) {
  check_generate_options(options);
  if (prompt.empty()) throw DataError("generate: the prompt has no tokens (a model needs at least one to start from)");
  const int64_t positions = model.config().max_positions, vocab = model.config().vocab_size;
  const int64_t given = static_cast<int64_t>(prompt.size());
  if (options.max_new_tokens > positions - given)  // (the sum itself overflows for --max-new-tokens near 2^63)
    throw DataError(cat("generate: a prompt of ", given, " tokens plus ", options.max_new_tokens,
                        " new tokens is more than the model's ", positions, " positions (max_position_embeddings)"));
  const int64_t total = given + options.max_new_tokens;
  // Ids past the tokenizer's (a padded embedding) have no text: never chosen.
  const int64_t choosable = options.vocab_limit > 0 ? std::min(vocab, options.vocab_limit) : vocab;
  std::vector<int32_t> generated;
  if (options.max_new_tokens == 0) return generated;
  Rng rng(options.seed);
  KvCache cache = model.new_cache(total);
  Tensor logits = model.logits_cached(prompt, cache, hook, /*last_only=*/true).to(Device::CPU);
  while (true) {
    const float* row = logits.data<float>();
    const int64_t v = first_non_finite(row, vocab);
    if (v >= 0)
      throw DataError(cat("generate: the logits after ", cache.length(), " positions are not finite (", row[v],
                          " for id ", v, ")",
                          hook.empty() ? ": the model's own (no hook ran)"
                                       : ": the model's own, or what the hook put into the residual stream"));
    const int32_t next = choose_next_token(row, choosable, options, rng);
    generated.push_back(next);
    const bool ends = std::find(options.eos_ids.begin(), options.eos_ids.end(), next) != options.eos_ids.end();
    if (ends || static_cast<int64_t>(generated.size()) == options.max_new_tokens) break;
    logits = model.logits_cached({next}, cache, hook, /*last_only=*/true).to(Device::CPU);
  }
  return generated;
}

}  // namespace sae
