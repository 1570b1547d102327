// sae_cache: a language model's activations at one hook point, computed from a text corpus once and
// written as an activation cache (sae/data/activation_cache.h) to train on many times with
// `sae_train --data CACHE/`. Thin: options -> write_text_cache (sae/data/text_cache.h) -> report.
//   sae_cache --model DIR --text FILE (--layer 2 | --hook NAME) --out CACHE/ [--dtype f32|f16|bf16]
// Killed at any moment, it continues where its manifest says when run again with the same options;
// shards already written are checked first, and any found deleted, truncated or altered are
// rewritten from the text (a complete cache too).
#include <cctype>
#include <cstdio>
#include <memory>

#include "lm/model_loader.h"
#include "lm/text_data.h"
#include "sae/cli/cli.h"
#include "sae/data/activation_cache.h"
#include "sae/data/text_cache.h"
#include "sae/report/run_log.h"
#include "sae/train/train_config.h"

int main(int argc, char** argv) {
  return sae::run_main("sae_cache", argc, argv, [&] {
    cxxopts::Options options("sae_cache", "Write a language model's activations on a text corpus as an activation cache");
    options.add_options()
        ("model", "a Hugging Face model folder: " + sae::supported_families_text() + " (config.json, model.safetensors, "
         "tokenizer.json)", cxxopts::value<std::string>())
        ("text", std::string("the corpus: ") + sae::kCorpusFormats,
         cxxopts::value<std::string>())
        ("layer", "cache hidden_states[layer] (without --hook: 2)", cxxopts::value<int64_t>())
        ("hook", "cache this hook point instead, SAELens's name (blocks.L.hook_resid_pre, ..., attn.hook_z)",
         cxxopts::value<std::string>())
        ("out", "the cache folder", cxxopts::value<std::string>())
        ("dtype", "f32 | f16 | bf16: how the activations are stored", cxxopts::value<std::string>()->default_value("f32"))
        ("shard-tokens", "tokens per shard (each shard ends at a story's end)",
         cxxopts::value<int64_t>()->default_value("262144"))
        ("max-stories", "stop after this many stories (0: the whole corpus)", cxxopts::value<int64_t>()->default_value("0"))
        ("long-stories", "a story longer than the model's positions: error | split (into pieces)",
         cxxopts::value<std::string>()->default_value("error"))
        ("text-field", "JSON lines: the field with the text", cxxopts::value<std::string>()->default_value("text"))
        ("prepend-bos", "on | off | auto: a BOS before every window (auto: when the tokenizer adds one)",
         cxxopts::value<std::string>()->default_value("auto"))
        ("context-size", "positions per window: every story cut into windows of this many, the BOS included "
         "(0: the model's positions, and --long-stories decides)", cxxopts::value<int64_t>()->default_value("0"))
        ("bos-activations", "skip | keep: cache the activations at BOS positions (skipped by default)",
         cxxopts::value<std::string>()->default_value("skip"))
        ("device", "cpu | cuda | auto", cxxopts::value<std::string>()->default_value("auto"))
        ("progress", "auto | bar | lines | none", cxxopts::value<std::string>()->default_value("auto"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    for (const char* required : {"model", "text", "out"})
      if (!parsed.count(required)) throw sae::UsageError(sae::cat("--", required, " is required"));
    sae::TextCacheOptions o;
    o.model_dir = parsed["model"].as<std::string>();
    o.text = parsed["text"].as<std::string>();
    o.out = parsed["out"].as<std::string>();
    if (o.out.find(',') != std::string::npos)  // a comma in --data separates a crosscoder's sources
      throw sae::UsageError(sae::cat("--out '", sae::printable(o.out), "': a cache whose name has a comma cannot be "
                                     "read back (--data A,B names two sources): choose a name without one"));
    o.max_stories = parsed["max-stories"].as<int64_t>();
    o.choice = sae::hook_choice_given(parsed);
    sae::require_input_file(o.text);
    o.dtype = parsed["dtype"].as<std::string>();
    if (o.dtype != "f32" && o.dtype != "f16" && o.dtype != "bf16")
      throw sae::UsageError(sae::cat("--dtype: expected f32, f16 or bf16, got '", o.dtype, "'"));
    for (char& c : o.dtype) c = static_cast<char>(std::toupper(c));
    const std::string long_stories = parsed["long-stories"].as<std::string>();
    if (long_stories != "error" && long_stories != "split")
      throw sae::UsageError(sae::cat("--long-stories: expected error or split, got '", long_stories, "'"));
    o.split_long_stories = long_stories == "split";
    if (o.max_stories < 0) throw sae::UsageError("--max-stories must be >= 0");
    o.text_field = parsed["text-field"].as<std::string>();
    sae::check_text_field(o.text, o.text_field);
    o.bos = sae::parse_bos_mode(parsed["prepend-bos"].as<std::string>());
    o.context_size = parsed["context-size"].as<int64_t>();
    sae::check_context_size(o.context_size);
    // It would be recorded as if it had acted (a cache made before this refusal goes on as it was made).
    if (o.split_long_stories && o.context_size > 0 && !sae::is_activation_cache(o.out))
      throw sae::UsageError(sae::kSplitBesideContextSize);
    const std::string bos_activations = parsed["bos-activations"].as<std::string>();
    if (bos_activations != "skip" && bos_activations != "keep")
      throw sae::UsageError(sae::cat("--bos-activations: expected skip or keep, got '", bos_activations, "'"));
    o.keep_bos = bos_activations == "keep";
    o.shard_tokens = parsed["shard-tokens"].as<int64_t>();
    o.device = sae::resolve_device(sae::parse_device_choice(parsed["device"].as<std::string>()));
    const sae::ProgressMode progress_mode = sae::parse_progress_mode(parsed["progress"].as<std::string>());

    std::unique_ptr<sae::Progress> progress;
    sae::TextCacheEvents events;
    events.note = [](const std::string& line) { std::printf("sae_cache: %s\n", line.c_str()); };
    events.begin = [&](int64_t bytes, int64_t offset) {
      progress = std::make_unique<sae::Progress>(progress_mode, bytes, offset, "sae_cache ");
    };
    events.story_done = [&](int64_t offset, int64_t tokens, int64_t stories) {
      progress->update_position(offset, tokens, sae::cat(stories, " stories"));
    };
    const sae::TextCacheResult r = sae::write_text_cache(o, events);
    if (r.complete_already) {
      std::printf("sae_cache: %s is complete already (%lld tokens, %lld stories)\n", o.out.c_str(),
                  (long long)r.manifest.tokens, (long long)r.manifest.stories);
      return 0;
    }
    progress->finish();
    std::printf("sae_cache: wrote %s: %lld tokens of %lld stories in %lld windows, %zu shards, d %lld, %s, %s of %s\n",
                o.out.c_str(), (long long)r.manifest.tokens, (long long)r.stories_read, (long long)r.manifest.stories,
                r.manifest.shards.size(), (long long)r.d, o.dtype.c_str(), r.hook_name.c_str(), o.model_dir.c_str());
    return 0;
  });
}
